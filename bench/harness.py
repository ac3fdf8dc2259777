"""Shared by the client-interface benchmarks: the server process, percentiles, memory, the machine.

The server is `homeskillet up --config FILE --http 127.0.0.1:0` in a child process on an embedded
nats-server, with one instant echo pool, so a benchmark's clients (here or in other children)
measure the real process a user would run.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec

from homeskillet.config import PoolSpec, Settings
from homeskillet.natsd import NatsServer

MODEL = "gemma-2b"  # the default covenant's model; both paths name it so they resolve the same covenant
_HTTP = re.compile(r"HTTP on (http://\S+)")
_EVENT = re.compile(r"\[(warning|error|critical)\s*\]\s+(\S+)")


def echo_pool() -> PoolSpec:
    # Instant, and wide enough that 1,000 queries at once are admitted rather than queued or refused.
    return PoolSpec(name="echo/bench", provider="echo", pool_class="standard", vram_mb=81920, tflops=990,
                    usd_per_mtok_in=0.1, usd_per_mtok_out=0.2, start_ms=0, ms_per_token=0, capacity=2048,
                    queue_limit=8192)


@dataclass
class Served:
    nats: NatsServer
    proc: subprocess.Popen[str]
    http_url: str
    tmp: Path

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def log_events(self) -> dict[str, int]:
        """How many times the server logged each warning or error event (e.g. ``strike_failed``)."""
        counts: Counter[str] = Counter()
        for line in (self.tmp / "server.log").read_text().splitlines():
            found = _EVENT.search(line)
            if found:
                counts[found.group(2)] += 1
        return dict(counts)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.nats.stop()


def serve(pools: list[PoolSpec] | None = None) -> Served:
    """An embedded nats-server and `homeskillet up --http 127.0.0.1:0` on it (one instant echo pool
    unless ``pools`` are given); returns once it serves."""
    nats = NatsServer()
    nats.start()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-"))
    cfg = tmp / "bench.toml"
    cfg.write_text(msgspec.toml.encode(Settings(nats=[nats.url], pools=pools or [echo_pool()])).decode())
    log = (tmp / "server.log").open("w")  # its warnings are counted in the report, not lost in the terminal
    proc = subprocess.Popen([sys.executable, "-m", "homeskillet.cli", "--log-level", "WARNING", "up", "--config",
                             str(cfg), "--http", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    assert proc.stdout is not None
    for line in proc.stdout:
        if "serving" in line:
            found = _HTTP.search(line)
            if found is None:
                proc.kill()
                nats.stop()
                raise RuntimeError(f"homeskillet up did not report an HTTP address: {line.strip()}")
            return Served(nats, proc, found.group(1), tmp)
    nats.stop()
    raise RuntimeError("homeskillet up exited before serving; run it by hand to see why")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def memory_kib(pid: int) -> dict[str, int]:
    """Resident set now (VmRSS) and its high-water mark (VmHWM) from /proc, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_time_ns(pid: int) -> int:
    """CPU time the process has run, all threads, in ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> str:
    """The process's 'Max open files' soft/hard limits, as /proc shows them."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "unknown"


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft file-descriptor limit to its hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
            f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}")
