"""Overhead of the full query path, as ratios to raw NATS request-reply measured in the same run.

(a) raw: nats-py request-reply to an echo responder in another process.
(b) full, one process: an hs.query round trip to `homeskillet up` in another process hosting the
    instant echo pool itself: analysis, award from standing quotes, loop-side admission, strike over
    NATS, settlement, verdict, fusion.
(c) full, pool host apart: the same query to `homeskillet up` with no pool of its own, the echo
    pool served by `homeskillet pool serve` in a third process (how production runs).
(d) floor: the two NATS hops of (b) and nothing else, in plain nats-py (a responder that answers
    each request by making a request to a second echo responder in its own process): what the
    architecture's shape costs before Homeskillet does any work.

All clients run here, all servers in child processes on the same embedded nats-server, so the
paths differ only by what Homeskillet does. Prints p50/p99 at 1 in flight, throughput at 64 in
flight, the ratios, and the CPU each Homeskillet process spent per query at 64 in flight (Linux;
steadier than wall-clock figures on a shared machine).
Usage: python bench/overhead.py [--n 2000] [--topology both|one|split] [--json out.json] [--no-journal]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats

from homeskillet.config import PoolSpec, Settings
from homeskillet.natsd import NatsServer
from homeskillet.wire import Answer, Query, encode

RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()  # the server has the subscription before we say ready
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
CHAIN = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    tasks = set()
    async def echo(msg):
        await msg.respond(msg.data)
    async def relay(msg):
        async def run():
            reply = await nc.request("bench.chain.b", msg.data, timeout=10)
            await msg.respond(reply.data)
        task = asyncio.get_running_loop().create_task(run())  # concurrent, as the ingress is
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await nc.subscribe("bench.chain.b", cb=echo)
    await nc.subscribe("bench.chain.a", cb=relay)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
JOURNAL = "--no-journal" not in sys.argv  # every NATS query recorded for takeover (parking.py)
POOL = PoolSpec(name="echo/bench", provider="echo", pool_class="standard", vram_mb=81920, tflops=990,
                usd_per_mtok_in=0.1, usd_per_mtok_out=0.2, start_ms=0, ms_per_token=0, capacity=256,
                queue_limit=4096)


async def one_in_flight(call: Callable[[], Awaitable[None]], n: int) -> list[float]:
    for _ in range(min(200, n)):
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def throughput(call: Callable[[], Awaitable[None]], n: int, inflight: int = 64) -> float:
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with sem:
            await call()

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, subject: str, payload: bytes, n: int, check: Callable[[Any], None],
                  servers: list[subprocess.Popen[str]]) -> dict[str, Any]:
    nc = await nats.connect(url)

    async def call() -> None:
        msg = await nc.request(subject, payload, timeout=10)
        check(msg)

    lat = await one_in_flight(call, n)
    before = [cpu_seconds(p.pid) for p in servers]
    thr = await throughput(call, n * 2)
    cpu = [(cpu_seconds(p.pid) - b) / (n * 2) * 1e6 for p, b in zip(servers, before, strict=True)]
    await nc.close()
    return {"p50_us": statistics.median(lat), "p99_us": pct(lat, 0.99), "rps_64": thr, "cpu_us_per_query": cpu}


def spawn(args: list[str], word: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if word in line:
            return proc
    raise RuntimeError(f"{args[:4]} exited before saying {word!r}")


def homeskillet(*args: str) -> list[str]:
    return [sys.executable, "-m", "homeskillet.cli", "--log-level", "WARNING", *args]


def check_answer(msg: Any) -> None:
    if (msg.headers or {}).get("Nats-Service-Error"):
        raise RuntimeError(msg.headers["Nats-Service-Error"])
    msgspec.json.decode(msg.data, type=Answer)


async def until_quoted(url: str) -> None:
    """Until the pool publishes a quote the query side has had the time to see (split topology)."""
    nc = await nats.connect(url)
    sub = await nc.subscribe("hs.quote.>")
    await sub.next_msg(timeout=10)
    await sub.next_msg(timeout=10)
    await nc.close()


async def full_path(server: NatsServer, tmp: Path, n: int, split: bool) -> dict[str, Any]:
    both = tmp / "both.toml"
    both.write_text(msgspec.toml.encode(Settings(nats=[server.url], pools=[POOL], journal_queries=JOURNAL)).decode())
    procs: list[subprocess.Popen[str]] = []
    try:
        if split:
            procs.append(spawn(homeskillet("pool", "serve", "--config", str(both), POOL.name), "pool host"))
            query_side = tmp / "query.toml"
            query_side.write_text(msgspec.toml.encode(Settings(nats=[server.url], pools=[],
                                                               journal_queries=JOURNAL)).decode())
            procs.insert(0, spawn(homeskillet("up", "--config", str(query_side)), "serving"))
            await until_quoted(server.url)
        else:
            procs.append(spawn(homeskillet("up", "--config", str(both)), "serving"))
        query = encode(Query(prompt="What does a strike cost?", tenant="bench"))
        return await measure(server.url, "hs.query", query, n, check_answer, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--topology", choices=["both", "one", "split"], default="both")
    ap.add_argument("--json")
    ap.add_argument("--no-journal", action="store_true",
                    help="journal_queries = false: no record per NATS query (its hot-path cost, by difference)")
    args = ap.parse_args()
    server = NatsServer()
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        raw_proc = spawn([sys.executable, "-c", RESPONDER, server.url], "ready")
        try:
            results["raw"] = await measure(server.url, "bench.echo", b"x" * 120, args.n, lambda m: None, [raw_proc])
        finally:
            raw_proc.kill()
            raw_proc.wait()
        chain_proc = spawn([sys.executable, "-c", CHAIN, server.url], "ready")
        try:
            results["floor: two hops, no work"] = await measure(server.url, "bench.chain.a", b"x" * 120, args.n,
                                                                 lambda m: None, [chain_proc])
        finally:
            chain_proc.kill()
            chain_proc.wait()
        if args.topology in ("both", "one"):
            results["one process"] = await full_path(server, tmp, args.n, split=False)
        if args.topology in ("both", "split"):
            results["pool host apart"] = await full_path(server, tmp, args.n, split=True)
    finally:
        server.stop()

    raw = results["raw"]
    machine = f"{platform.node()} {platform.machine()} {platform.processor() or ''} python {platform.python_version()}"
    print(f"machine: {machine.strip()}; cores: {os.cpu_count()}; date: {time.strftime('%Y-%m-%d')}; n={args.n}")
    print(f"{'path':<28}{'p50 µs':>9}{'p99 µs':>9}{'req/s @64':>11}{'p50 x':>8}{'p99 x':>8}{'thr x':>8}"
          f"  CPU µs/query @64 (per process)")
    ratios: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        x = {"p50": r["p50_us"] / raw["p50_us"], "p99": r["p99_us"] / raw["p99_us"],
             "rps_64": r["rps_64"] / raw["rps_64"]}
        ratios[name] = x
        cpu = " + ".join(f"{c:.0f}" for c in r["cpu_us_per_query"])
        print(f"{name:<28}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['rps_64']:>11.0f}{x['p50']:>7.2f}x{x['p99']:>7.2f}x"
              f"{x['rps_64']:>7.2f}x  {cpu}")
    print("targets: p50 ≤ 3x raw at 1 in flight; throughput ≥ 0.3x raw at 64 in flight")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": ratios, "machine": machine}))


if __name__ == "__main__":
    asyncio.run(main())
