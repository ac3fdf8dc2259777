"""A real OpenSSH ``sshd`` on loopback for the SSH connector's tests, installed when missing.

CI runs ``make test`` on a clean Debian machine as root, so when ``sshd`` is absent this module
installs ``openssh-server`` with apt-get (as root, or through password-less sudo) and fails with
a message saying what to do when it cannot. The server runs in the foreground (``-D -e``) from a
temporary directory: its own host key, one client key, key authentication only, local TCP
forwarding only, bound to 127.0.0.1 on a free port, logging at DEBUG1 so a test can see which
channel types were opened.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Sshd", "ensure_sshd", "running_sshd"]

_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def _find_sshd() -> str | None:
    found = shutil.which("sshd")
    return found or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)


def _apt(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=300", *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900, check=False)


def ensure_sshd() -> str:
    """The path of ``sshd``, installing ``openssh-server`` first when it is missing."""
    if (found := _find_sshd()) is not None:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("sshd is not installed and there is no apt-get to install it; "
                           "install OpenSSH's server (openssh-server) and rerun the tests")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        raise RuntimeError("sshd is not installed, and installing it needs root: run the tests as root, give this "
                           "user password-less sudo, or run 'apt-get install openssh-server' yourself")
    # Debian starts a package's service on install unless policy-rc.d says no: we want no
    # system-wide sshd on port 22, only ours. Docker images ship this file; a bare machine may not.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if prefix == [] and not policy.exists():
        policy.write_text("#!/bin/sh\n# homeskillet's test setup: no service start while installing sshd\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        result = _apt(prefix, "install", "-y", "--no-install-recommends", "openssh-server")
        if result.returncode != 0:  # stale or missing package lists: refresh them once
            _apt(prefix, "update")
            result = _apt(prefix, "install", "-y", "--no-install-recommends", "openssh-server")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    if result.returncode != 0 or (found := _find_sshd()) is None:
        raise RuntimeError(f"installing openssh-server failed (apt-get exit {result.returncode}):\n"
                           f"{result.stdout[-2000:]}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, passphrase: str = "") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "homeskillet-test", "-f", str(path)],
                   check=True, capture_output=True)


class Sshd:
    """One running sshd and everything a client needs to reach it."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, sshd: str, timeout_s: float = 20.0) -> None:
        _keygen(self.host_key)
        _keygen(self.client_key)
        (self.dir / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.port = _free_port()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            f"AllowUsers {self.user}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "AllowTcpForwarding local", "AllowAgentForwarding no", "X11Forwarding no", "PermitTunnel no",
            "LogLevel DEBUG1", "",
        ]))
        if os.geteuid() == 0:  # sshd insists on its privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while "Server listening on 127.0.0.1" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start (exit {self.proc.returncode}):\n{self.log_text()[-3000:]}")
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sessions(self) -> list[int]:
        """Pids of the per-connection processes sshd forked (every descendant of the listener)."""
        if self.proc is None:
            return []
        parent: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    # the command may hold spaces and parentheses: the ppid follows the last ')'
                    parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        found, frontier = [], [self.proc.pid]
        while frontier:
            kids = [pid for pid, ppid in parent.items() if ppid in frontier]
            found += kids
            frontier = kids
        return found

    def signal_sessions(self, sig: signal.Signals) -> list[int]:
        pids = self.sessions()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def client_config(self, path: Path, hosts: dict[str, dict[str, str]]) -> Path:
        """An OpenSSH client config with one ``Host`` entry per alias, all pointing at this sshd."""
        lines = ["# nodes of the homeskillet tests", ""]
        for alias, extra in hosts.items():
            lines += [f"Host {alias}", "    HostName 127.0.0.1", f"    Port {self.port}", f"    User {self.user}",
                      f"    IdentityFile {self.client_key}", "    IdentitiesOnly yes",
                      *(f"    {k} {v}" for k, v in extra.items()), ""]
        path.write_text("\n".join(lines))
        return path

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal_sessions(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_sshd(workdir: Path) -> Iterator[Sshd]:
    server = Sshd(workdir)
    server.start(ensure_sshd())
    try:
        yield server
    finally:
        server.stop()
