"""Cascade vs always-premium, through the real runtime (embedded nats-server, pool hosts, echo
engines): cost ratio, and agreement with the premium answers on the queries the cascade keeps.

Scenario: a cheap pool (1/20 of premium's token prices) that answers 70 % of the queries as the
premium pool would (``quality = 0.7``, fixed per prompt by its seed). How well its confidence
separates right from wrong answers is the scenario's stated assumption, so several are run:

- ``logprobs-separated``: confidence of right answers in [0.55, 0.99], wrong in [0.05, 0.50];
- ``logprobs-overlap``: right in [0.45, 0.99], wrong in [0.05, 0.65] (a noisier model), at a
  few thresholds: the cost/agreement trade-off;
- ``self-consistency``: no logprobs; two samples, wrong answers vary between samples.

Usage: python bench/cascade.py [--n 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from homeskillet.config import PoolSpec, Settings
from homeskillet.runtime import Runtime
from homeskillet.telemetry import configure_logging

PREMIUM_OPTS: dict[str, Any] = {}


def pools(cheap_options: dict[str, Any]) -> list[PoolSpec]:
    return [
        PoolSpec(name="echo/cheap", provider="echo", pool_class="standard", vram_mb=24576, tflops=82,
                 usd_per_mtok_in=0.05, usd_per_mtok_out=0.10, start_ms=5, ms_per_token=0.1, options=cheap_options),
        PoolSpec(name="echo/premium", provider="echo", pool_class="premium", vram_mb=81920, tflops=990,
                 usd_per_mtok_in=1.0, usd_per_mtok_out=2.0, start_ms=5, ms_per_token=0.1, options=PREMIUM_OPTS),
    ]


SCENARIOS: dict[str, tuple[dict[str, Any], list[float], int]] = {
    # name: (cheap pool options, thresholds, samples)
    "logprobs-separated": ({"quality": 0.7, "seed": 11, "logprobs": True, "confidence_right": [0.55, 0.99],
                            "confidence_wrong": [0.05, 0.50]}, [0.52], 1),
    "logprobs-overlap": ({"quality": 0.7, "seed": 11, "logprobs": True, "confidence_right": [0.45, 0.99],
                          "confidence_wrong": [0.05, 0.65]}, [0.5, 0.6, 0.66], 1),
    "self-consistency": ({"quality": 0.7, "seed": 11, "vary_wrong": True}, [0.9], 2),
}


def questions(n: int) -> list[str]:
    return [f"Question {i}: what is the answer to item {i} of the cascade benchmark?" for i in range(n)]


async def ask_all(rt: Runtime, prompts: list[str], overrides: dict[str, Any], inflight: int = 16) -> list[Any]:
    sem = asyncio.Semaphore(inflight)

    async def one(p: str) -> Any:
        async with sem:
            return await rt.ask(prompt=p, overrides=overrides, tenant="bench")

    return await asyncio.gather(*(one(p) for p in prompts))


async def measure(name: str, n: int) -> list[dict[str, Any]]:
    options, thresholds, samples = SCENARIOS[name]
    rt = Runtime(Settings(pools=pools(options)))
    await rt.start()
    try:
        qs = questions(n)
        premium = await ask_all(rt, qs, {"resources": {"pool_class": "premium"}, "fallback": {"steps": ["fail"]}})
        base_cost = sum(a.cost_usd for a in premium)
        rows = []
        for th in thresholds:
            over = {"strategy": {"serve": "cascade", "cascade": {"tiers": ["standard", "premium"], "threshold": th,
                                                                 "samples": samples}}}
            answers = await ask_all(rt, qs, over)
            kept = [(a, p) for a, p in zip(answers, premium, strict=True)
                    if a.fragments[-1].pool == "echo/cheap"]
            rows.append({
                "scenario": name, "threshold": th, "samples": samples, "n": n,
                "cost_ratio": sum(a.cost_usd for a in answers) / base_cost,
                "kept_cheap": len(kept) / n,
                "agreement_kept": sum(a.text == p.text for a, p in kept) / max(1, len(kept)),
                "agreement_all": sum(a.text == p.text for a, p in zip(answers, premium, strict=True)) / n,
            })
        return rows
    finally:
        await rt.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_logging(level="WARNING")
    rows = []
    for name in SCENARIOS:
        rows += await measure(name, args.n)
    print(f"machine: {platform.machine()} python {platform.python_version()}; date: {time.strftime('%Y-%m-%d')}; "
          f"n={args.n} queries; cheap pool right on 70 %, priced 1/20 of premium")
    print(f"{'scenario':<20}{'thr':>6}{'samples':>8}{'cost/premium':>14}{'kept cheap':>12}{'agree kept':>12}"
          f"{'agree all':>11}")
    for r in rows:
        print(f"{r['scenario']:<20}{r['threshold']:>6.2f}{r['samples']:>8}{r['cost_ratio']:>14.3f}"
              f"{r['kept_cheap']:>12.3f}{r['agreement_kept']:>12.3f}{r['agreement_all']:>11.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
