"""The chaos suite, long forms: each fault of bench/chaos/faults.py under ``--rate`` queries a second
for ``--duration`` seconds; prints the table for docs/benchmarks.md (and its notes).

Usage: python bench/chaos/run.py [--rate 20] [--duration 30] [--only node_kill,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from bench.chaos import faults

RUNS: dict[str, Callable[..., Awaitable[faults.Tally]]] = {
    "node_kill": faults.node_kill,
    "node_kill_with_orchestrator": lambda **kw: faults.node_kill(with_orchestrator=True, **kw),
    "orchestrator_kill": faults.orchestrator_kill,
    "orchestrator_kill_cluster": lambda **kw: faults.orchestrator_kill(nodes=3, **kw),
    "orchestrator_pause": faults.orchestrator_pause,
    "pool_kill": faults.pool_kill,
}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(RUNS)
    print(f"chaos suite: {a.rate:g} q/s for {a.duration:g} s per fault; {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}", flush=True)
    tallies = []
    for name in names:
        t = await RUNS[name](rate=a.rate, duration_s=a.duration)
        tallies.append(t)
        print(t.row(), "  notes:", "; ".join(t.notes[:6]), flush=True)
    print()
    print(faults.HEADER)
    for t in tallies:
        print(t.row())
    if a.json:
        Path(a.json).write_text(json.dumps([dataclasses.asdict(t) for t in tallies], indent=1, default=str))


if __name__ == "__main__":
    asyncio.run(main())
