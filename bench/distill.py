"""Distillation on the real local model: the triage family, the base student's agreement first,
then a LoRA round (mlx-lm, in a child process exactly as the distiller runs it), then the trained
student on the same held-out tickets (entities never trained on; half on wordings never trained on).

Usage: python bench/distill.py [--train 240] [--heldout 100] [--steps 80] [--layers 0] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from homeskillet.distill.pipeline import prepare_round, run_job_in_child
from homeskillet.sims.families import SYSTEM, as_pairs, triage
from homeskillet.wire import Distill


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", type=int, default=0, help="blocks from the top that get LoRA (0: every block)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--model-dir", default="")
    a = ap.parse_args()
    if a.model_dir:
        model_dir = a.model_dir
    else:
        from homeskillet.localmodel import resolve_model_dir

        model_dir = str(resolve_model_dir())
    train, held = triage(a.train, a.heldout, seed=11)
    terms = Distill(student="triage-s", train_steps=a.steps, lora_rank=a.rank, validation_split=0.0,
                    confidence_threshold=0.8, learning_rate=a.lr)
    captured = as_pairs(train, "bench", "triage-s")
    root = Path(tempfile.mkdtemp(prefix="hs-distill-bench-"))
    job = prepare_round(captured, terms, "triage-s", 1, work_root=root / "work", adapters_root=root / "adapters",
                        base_model_dir=model_dir, system=SYSTEM)
    # Held-out pairs are the family's own held-out tickets, never in the training set.
    heldout = as_pairs(held, "heldout", "triage-s")
    hp = root / "heldout.jsonl"
    hp.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in heldout))
    gp = root / "groups.json"
    gp.write_bytes(msgspec.json.encode({p.pair_id: e.group for p, e in zip(heldout, held, strict=True)}))
    job = msgspec.structs.replace(job, heldout_path=str(hp), groups_path=str(gp), eval_max_tokens=4,
                                  num_layers=a.layers)
    job_path = Path(job.data_dir).parent / "job.json"
    job_path.write_bytes(msgspec.json.encode(job))
    t0 = time.monotonic()

    def progress(p: object) -> None:
        print(f"  step {p.step}/{p.steps} loss {p.loss:.3f} ({p.elapsed_s:.0f} s)", file=sys.stderr)  # type: ignore[attr-defined]

    r = asyncio.run(run_job_in_child(job_path, progress))
    wall = time.monotonic() - t0
    assert r.before is not None and r.after is not None
    print(f"# distillation: triage, {len(train)} training tickets, {len(held)} held-out "
          f"({sum(e.group == 'unseen_wording' for e in held)} on unseen wordings)")
    blocks = "every block" if a.layers <= 0 else f"the top {a.layers} blocks"
    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.node()}; "
          f"{time.strftime('%Y-%m-%d')}; LoRA rank {a.rank} on {blocks}, batch {job.batch_size}, "
          f"lr {a.lr}, {a.steps} steps\n")
    print("| student | held-out exact match | seen wordings | unseen wordings |")
    print("|---|---|---|---|")
    for name, ev in (("base SmolLM2-135M", r.before), (f"after {a.steps} LoRA steps", r.after)):
        seen, unseen = ev.groups["seen_wording"].agreed, ev.groups["unseen_wording"].agreed
        print(f"| {name} | {ev.overall.agreed:.1%} | {seen:.1%} | {unseen:.1%} |")
    print(f"\ntraining {r.elapsed_s:.0f} s ({r.elapsed_s / a.steps:.2f} s/step), whole job with both evaluations "
          f"{wall:.0f} s; final loss {r.final_loss:.3f}")
    print("samples after:", r.after.samples[:3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
