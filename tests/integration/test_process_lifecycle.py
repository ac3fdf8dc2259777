"""``homeskillet up`` and ``pool serve`` as an operator runs them (issue #10, items 1 and 9): a
taken port fails start-up at once naming the port; SIGTERM under load stops both processes
within 10 s, the embedded nats-server included; SIGKILL of ``up`` does not orphan its
nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from homeskillet.natsd import _pdeathsig_prefix

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for child processes")

CLI = [sys.executable, "-m", "homeskillet.cli"]
ENV = {**os.environ, "HOMESKILLET_LOG_LEVEL": "WARNING"}
POOL = ('[[pools]]\nname = "{name}"\nprovider = "echo"\npool_class = "standard"\nvram_mb = 81920\ntflops = 990.0\n'
        'usd_per_mtok_in = {price}\ncapacity = 64\noptions = {{ delay_ms = 200.0 }}\n')


def _config(tmp_path: Path, name: str, price: float) -> Path:
    path = tmp_path / f"{name.replace('/', '-')}.toml"
    path.write_text(POOL.format(name=name, price=price))
    return path


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _alive(pid)


def _wait_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 90.0) -> re.Match[str]:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        assert ready and proc.poll() is None, f"the process did not print {pattern!r}"
        if m := re.search(pattern, proc.stdout.readline()):
            return m


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["nats", "http"])
def test_a_taken_port_fails_start_up_at_once_naming_the_port(tmp_path: Path, taken_port: int, which: str) -> None:
    args = ["--port", str(taken_port)] if which == "nats" else ["--port", "-1", "--http", f"127.0.0.1:{taken_port}"]
    t0 = time.monotonic()
    done = subprocess.run([*CLI, "up", "--config", str(_config(tmp_path, "echo/a", 0.1)),
                           "--data-dir", str(tmp_path / "js"), *args], env=ENV, capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - t0
    assert done.returncode == 2, done.stderr
    first = done.stderr.strip().splitlines()[0]
    assert f"port {taken_port} on 127.0.0.1 is already in use" in first, done.stderr
    assert "did not become ready" not in done.stderr
    # Not the old 20 s wait for readiness (the start of the interpreter is most of what remains).
    assert took < 15, took


async def _load(url: str, subject: str, warmed: asyncio.Event, stop: asyncio.Event) -> None:
    """Eight 1 MiB prompts, then small queries one after another (``warmed`` once three are
    answered), until ``stop``."""
    async def quiet(_: Exception) -> None:  # the server going away is what this test does
        pass

    nc = await nats.connect(url, allow_reconnect=False, error_cb=quiet)
    big = ("word " * (1 << 18))[: (1 << 20) - 4096]
    pending = [asyncio.create_task(nc.request(subject, json.dumps({"prompt": big, "tenant": "big"}).encode(),
                                              timeout=60)) for _ in range(8)]
    answered = 0
    try:
        while not stop.is_set():
            try:
                await nc.request(subject, json.dumps({"prompt": "hello", "tenant": "small"}).encode(), timeout=5)
                answered += 1
                if answered >= 3:
                    warmed.set()
            except Exception:
                if nc.is_closed:
                    break
                await asyncio.sleep(0.05)
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()


@pytest.mark.timeout(240)
async def test_sigterm_stops_up_and_pool_serve_under_load_children_included(tmp_path: Path) -> None:
    up = subprocess.Popen([*CLI, "up", "--config", str(_config(tmp_path, "echo/local", 0.001)), "--port", "-1",
                           "--data-dir", str(tmp_path / "js")], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    pool = None
    try:
        url = _wait_line(up, r"serving on (nats://\S+)").group(1)
        natsd = _children(up.pid)
        assert len(natsd) == 1, natsd
        pool = subprocess.Popen([*CLI, "pool", "serve", "echo/remote", "--nats", url, "--config",
                                 str(_config(tmp_path, "echo/remote", 0.0005))], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        _wait_line(pool, r"pool host on")
        warmed, stop = asyncio.Event(), asyncio.Event()
        load = asyncio.create_task(_load(url, "hs.query", warmed, stop))
        await asyncio.wait_for(warmed.wait(), 60)  # the big prompts in flight, small ones flowing: under load
        for proc in (pool, up):
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            await asyncio.to_thread(proc.wait, 10)  # raises TimeoutExpired past 10 s
            assert proc.returncode in (0, 1), proc.returncode  # 1: the stop deadline had to force it
            print(f"{proc.args[3]}: stopped {time.monotonic() - t0:.2f} s after SIGTERM")
        assert _wait_gone(natsd[0], 5), "the embedded nats-server outlived homeskillet up"
        stop.set()
        await load
    finally:
        for proc in (pool, up):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _pdeathsig_prefix(), reason="needs util-linux's setpriv with --pdeathsig (Debian: util-linux)")
def test_sigkill_of_up_does_not_orphan_its_nats_server(tmp_path: Path) -> None:
    up = subprocess.Popen([*CLI, "up", "--config", str(_config(tmp_path, "echo/local", 0.1)), "--port", "-1",
                           "--data-dir", str(tmp_path / "js")], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_line(up, r"serving on nats://")
        natsd = _children(up.pid)
        assert len(natsd) == 1 and _alive(natsd[0])
    finally:
        up.kill()
        up.wait()
    assert _wait_gone(natsd[0], 10), "nats-server kept running after its parent was killed"


def test_nats_server_on_a_taken_port_says_so_instead_of_waiting(taken_port: int) -> None:
    from homeskillet.errors import HomeskilletError
    from homeskillet.natsd import NatsServer

    with pytest.raises(HomeskilletError) as err:
        NatsServer(port=taken_port).start(timeout=120)  # it would wait all of that for a readiness never coming
    assert f"port {taken_port} on 127.0.0.1 is already in use" in err.value.message


async def test_the_runtime_binds_its_http_port_before_starting_anything(taken_port: int) -> None:
    from homeskillet.config import HttpSettings, Settings
    from homeskillet.errors import HomeskilletError
    from homeskillet.runtime import Runtime

    rt = Runtime(Settings(http=HttpSettings(listen=f"127.0.0.1:{taken_port}"), pools=[]))
    with pytest.raises(HomeskilletError) as err:
        await rt.start()
    assert f"HTTP port {taken_port} on 127.0.0.1 is already in use" in err.value.message
    assert rt.natsd is None and rt.nc is None  # nothing was started, so nothing waited
