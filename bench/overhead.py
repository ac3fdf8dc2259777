"""Overhead of the full query path, as ratios to raw NATS request-reply measured in the same run.

(a) raw: nats-py request-reply to an echo responder in another process.
(b) full: an hs.query round trip to `homeskillet up` in another process: analysis, award from
    standing quotes, lease commit, strike to an instant echo pool, settlement, fusion.

Both clients run here, both servers in a child process on the same embedded nats-server, so
the two paths differ only by what Homeskillet does. Prints p50/p99 at 1 in flight, throughput
at 64 in flight, and the ratios. Usage: python bench/overhead.py [--n 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def one_in_flight(call, n: int) -> list[float]:
    for _ in range(min(200, n)):
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def throughput(call, n: int, inflight: int = 64) -> float:
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


async def measure(url: str, subject: str, payload: bytes, n: int, check) -> dict[str, float]:
    nc = await nats.connect(url)

    async def call() -> None:
        msg = await nc.request(subject, payload, timeout=10)
        check(msg)

    lat = await one_in_flight(call, n)
    thr = await throughput(call, n * 2)
    await nc.close()
    return {"p50_us": statistics.median(lat), "p99_us": pct(lat, 0.99), "rps_64": thr}


def wait_ready(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if word in line:
            return
    raise RuntimeError(f"child exited before saying {word!r}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    server = NatsServer()
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-"))
    try:
        raw_proc = subprocess.Popen([sys.executable, "-c", RESPONDER, server.url], stdout=subprocess.PIPE, text=True)
        wait_ready(raw_proc, "ready")
        payload = b"x" * 120
        raw = await measure(server.url, "bench.echo", payload, args.n, lambda m: None)
        raw_proc.kill()

        pool = PoolSpec(name="echo/bench", provider="echo", pool_class="standard", vram_mb=81920, tflops=990,
                        usd_per_mtok_in=0.1, usd_per_mtok_out=0.2, start_ms=0, ms_per_token=0, capacity=256,
                        queue_limit=4096)
        cfg = tmp / "bench.toml"
        cfg.write_text(msgspec.toml.encode(Settings(nats=[server.url], pools=[pool])).decode())
        hs = subprocess.Popen([sys.executable, "-m", "homeskillet.cli", "--log-level", "WARNING", "up", "--config",
                               str(cfg)], stdout=subprocess.PIPE, text=True)
        wait_ready(hs, "serving")
        query = encode(Query(prompt="What does a strike cost?", tenant="bench"))

        def check(msg) -> None:
            if (msg.headers or {}).get("Nats-Service-Error"):
                raise RuntimeError(msg.headers["Nats-Service-Error"])
            msgspec.json.decode(msg.data, type=Answer)

        full = await measure(server.url, "hs.query", query, args.n, check)
        hs.terminate()
        hs.wait(10)
    finally:
        server.stop()

    ratios = {"p50": full["p50_us"] / raw["p50_us"], "p99": full["p99_us"] / raw["p99_us"],
              "rps_64": full["rps_64"] / raw["rps_64"]}
    machine = f"{platform.node()} {platform.machine()} {platform.processor() or ''} python {platform.python_version()}"
    print(f"machine: {machine.strip()}; date: {time.strftime('%Y-%m-%d')}; n={args.n}")
    print(f"{'path':<26}{'p50 µs':>10}{'p99 µs':>10}{'req/s @64':>12}")
    print(f"{'raw NATS request-reply':<26}{raw['p50_us']:>10.0f}{raw['p99_us']:>10.0f}{raw['rps_64']:>12.0f}")
    print(f"{'full hs.query':<26}{full['p50_us']:>10.0f}{full['p99_us']:>10.0f}{full['rps_64']:>12.0f}")
    print(f"ratios full/raw: p50 {ratios['p50']:.2f}x (target ≤ 3x), p99 {ratios['p99']:.2f}x, "
          f"throughput {ratios['rps_64']:.2f}x (target ≥ 0.3x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "full": full, "ratios": ratios, "machine": machine}))


if __name__ == "__main__":
    asyncio.run(main())
