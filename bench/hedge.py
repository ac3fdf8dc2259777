"""Hedged strikes on heavy-tailed pools, through the real runtime (embedded nats-server, pool
hosts, echo engines): p50/p99 latency and cost with and without hedging.

Scenario: two pools with the same heavy tail (each strike: 8 ms, plus with probability 4 % a
Pareto(1.5) wait of at least 150 ms; independent seeds); the second costs 10 % more, so without
hedging every query goes to the first. With hedging (p90 or p95 of the first pool's track record), a
late strike gets a duplicate on the second pool; the loser is cancelled and billed what it had
processed (its prompt). Queries run one at a time after a warm-up that fills the track record.

Usage: python bench/hedge.py [--n 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from homeskillet.config import PoolSpec, Settings
from homeskillet.runtime import Runtime
from homeskillet.telemetry import configure_logging

TAIL = {"delay_ms": 8, "tail_p": 0.04, "tail_ms": 150, "tail_alpha": 1.5}


def pools() -> list[PoolSpec]:
    return [
        PoolSpec(name="echo/tail-a", provider="echo", pool_class="standard", vram_mb=24576, tflops=82,
                 usd_per_mtok_in=0.10, usd_per_mtok_out=0.20, start_ms=8, ms_per_token=0.0,
                 options={**TAIL, "seed": 1}),
        PoolSpec(name="echo/tail-b", provider="echo", pool_class="standard", vram_mb=24576, tflops=82,
                 usd_per_mtok_in=0.11, usd_per_mtok_out=0.22, start_ms=8, ms_per_token=0.0,
                 options={**TAIL, "seed": 2}),
    ]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def measure(hedge: bool, n: int, percentile: int = 95, warmup: int = 60) -> dict[str, Any]:
    over = {"qos": {"priority": 0},
            "strategy": {"hedge": {"enabled": hedge, "percentile": percentile, "min_samples": 20}}}
    rt = Runtime(Settings(pools=pools()))
    await rt.start()
    try:
        for i in range(warmup):
            await rt.ask(prompt=f"warm-up question {i} for the hedging benchmark", overrides=over, tenant="warm")
        lat, cost, fired, won = [], 0.0, 0, 0
        for i in range(n):
            t0 = time.perf_counter()
            a = await rt.ask(prompt=f"question {i} for the hedging benchmark", overrides=over, tenant="bench")
            lat.append((time.perf_counter() - t0) * 1000.0)
            cost += a.cost_usd
            fired += any(f.role == "hedge" for f in a.fragments)
            won += any("the hedge won" in f.why for f in a.fragments)
        ledger = await rt.ledger_report("bench")
        return {"hedge": hedge, "percentile": percentile if hedge else None, "n": n,
                "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 0.99),
                "max_ms": max(lat), "cost_usd": cost, "ledger_usd": ledger.spent_usd.get("bench", 0.0),
                "hedges_fired": fired, "hedge_won": won}
    finally:
        await rt.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_logging(level="WARNING")
    plain = await measure(False, args.n)
    runs = [plain] + [await measure(True, args.n, p) for p in (90, 95)]
    print(f"machine: {platform.machine()} python {platform.python_version()}; date: {time.strftime('%Y-%m-%d')}; "
          f"n={args.n} queries at 1 in flight; tail: {TAIL}")
    print(f"{'mode':<12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'cost USD':>13}{'fired':>7}{'hedge won':>11}"
          f"{'p99 ratio':>11}{'cost ratio':>12}")
    for r in runs:
        mode = f"hedged p{r['percentile']}" if r["hedge"] else "plain"
        r["p99_ratio"], r["cost_ratio"] = r["p99_ms"] / plain["p99_ms"], r["cost_usd"] / plain["cost_usd"]
        print(f"{mode:<12}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}{r['cost_usd']:>13.8f}"
              f"{r['hedges_fired']:>7}{r['hedge_won']:>11}{r['p99_ratio']:>10.2f}x{r['cost_ratio']:>11.3f}x")
    print("targets: p99 ratio ≤ 0.5x at cost ratio ≤ 1.10x")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
