"""Semantic cache on the shipped paraphrase fixture (tests/fixtures/paraphrases.json), through
``ResultCache`` itself: hit rate on paraphrases, false hits on distinct questions and on
one-word "hard negatives", and hits across tenants, for each embedder at a few thresholds.

Usage: python bench/cache.py [--minilm]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from homeskillet.analyze import fragment_hash
from homeskillet.cache import HashingEmbedder, ResultCache
from homeskillet.wire import CachePolicy, Fragment, FragmentOutcome

FIXTURE = json.loads((Path(__file__).parents[1] / "tests" / "fixtures" / "paraphrases.json").read_text())
OUT = FragmentOutcome(fragment_id="f", index=0, pool="p", strike_id="s", model="m", step="s", why="", cost_usd=0,
                      latency_ms=0)


def frag(prompt: str) -> Fragment:
    return Fragment(fragment_id="f", query_id="q", index=0, prompt=prompt, model="m", hash=fragment_hash(prompt, "m"),
                    fingerprint=0, prompt_tokens=1, max_tokens=1)


def run(name: str, embed, thresholds: list[float | None]) -> None:
    for th in thresholds:
        policy = CachePolicy(mode="semantic", threshold=th)
        c = ResultCache(embed=embed)
        for g in FIXTURE["groups"]:
            c.put("acme", "cov", frag(g[0]), g[0], OUT, policy)
        para = [(p, g[0]) for g in FIXTURE["groups"] for p in g[1:]]
        t0 = time.perf_counter()
        hits = sum(1 for p, src in para if (h := c.get("acme", "cov", frag(p), policy)) and h.text == src)
        per_ms = (time.perf_counter() - t0) * 1000 / len(para)
        false = sum(1 for q in FIXTURE["distinct"] if c.get("acme", "cov", frag(q), policy))
        hard = sum(1 for q in FIXTURE["hard_negatives"] if c.get("acme", "cov", frag(q), policy))
        crossed = sum(1 for p, _ in para if c.get("globex", "cov", frag(p), policy))
        shown = f"{th:.2f}" if th is not None else f"{c.threshold:.2f}*"
        print(f"{name:<9}{shown:>7}{hits / len(para):>10.3f}{false:>7}/{len(FIXTURE['distinct'])}"
              f"{hard:>7}/{len(FIXTURE['hard_negatives'])}{crossed:>9}{per_ms:>11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM embedder (the [embed] extra)")
    args = ap.parse_args()
    n = sum(len(g) - 1 for g in FIXTURE["groups"])
    print(f"machine: {platform.machine()} python {platform.python_version()}; date: {time.strftime('%Y-%m-%d')}; "
          f"{len(FIXTURE['groups'])} groups, {n} paraphrases; * = the embedder's calibrated default")
    print(f"{'embedder':<9}{'thr':>7}{'hit rate':>10}{'false':>10}{'hard':>9}{'crossed':>9}{'ms/lookup':>11}")
    run("hashing", HashingEmbedder(), [0.6, 0.65, None, 0.8])
    if args.minilm:
        from homeskillet.embeddings import MiniLMEmbedder

        run("minilm", MiniLMEmbedder(), [0.8, 0.85, None, 0.9])


if __name__ == "__main__":
    main()
