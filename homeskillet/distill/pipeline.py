"""One training round for a student: pairs → dataset → LoRA job (child process) → held-out scores →
canary or reject. Used by the distiller (``auto_train``), ``homeskillet distill train`` and
``POST /api/v1/distillation/train`` alike.

Files of a round, under ``<state>/distill/<student key>/v<n>/``: ``data/train.jsonl`` and
``data/valid.jsonl`` (chat format, read by mlx-lm's loader), ``heldout.jsonl`` (the validation pairs,
never trained on), ``job.json``. The adapter goes to ``<adapters dir>/<student key>-v<n>/``, where
every local pool finds it by name (``<base>+<student key>-v<n>``) without a restart.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..errors import BadRequest, TrainingFailed
from ..wire import Distill, DistillPair
from .canary import StudentState, decide
from .dataset import split_pairs, to_chat_record, trainable, write_jsonl
from .distiller import Distiller, adapter_name, student_key
from .train import TrainJob, TrainProgress, TrainResult

__all__ = ["prepare_round", "run_job_in_child", "run_round"]


def prepare_round(pairs: list[DistillPair], terms: Distill, key: str, version: int, *, work_root: Path,
                  adapters_root: Path, base_model_dir: str, resume_from: str = "", system: str = "",
                  seed: int = 0) -> TrainJob:
    """Write the round's files and return its job (pure apart from the files)."""
    good = trainable(pairs, terms.confidence_threshold)
    split = split_pairs(good, terms.validation_split, seed=seed)
    if not split.train:
        raise BadRequest(f"student {key!r}: none of its {len(pairs)} pairs is trainable (teacher confidence ≥ "
                         f"{terms.confidence_threshold}); capture more, or lower distill.confidence_threshold",
                         term="distill.confidence_threshold")
    work = work_root / adapter_name(key) / f"v{version}"
    write_jsonl(work / "data" / "train.jsonl", (to_chat_record(p, system) for p in split.train))
    write_jsonl(work / "data" / "valid.jsonl", (to_chat_record(p, system) for p in split.valid or split.train[:1]))
    heldout = work / "heldout.jsonl"
    heldout.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in split.valid))
    job = TrainJob(student=key, base_model_dir=base_model_dir, data_dir=str(work / "data"),
                   adapter_dir=str(adapters_root / f"{adapter_name(key)}-v{version}"), resume_from=resume_from,
                   steps=terms.train_steps, rank=terms.lora_rank, batch_size=min(terms.batch_size, len(split.train)),
                   learning_rate=terms.learning_rate, seed=seed, heldout_path=str(heldout) if split.valid else "",
                   measure=terms.agreement, semantic_threshold=terms.semantic_threshold, system=system)
    (work / "job.json").write_bytes(msgspec.json.encode(job))
    return job


async def run_job_in_child(job_path: Path, progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """``python -m homeskillet.distill.train``: a child process, so training never holds this loop's GIL."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "homeskillet.distill.train", str(job_path),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    err_task = asyncio.ensure_future(proc.stderr.read())
    result: TrainResult | None = None
    try:
        async for line in proc.stdout:
            if not line.startswith(b"{"):
                continue
            msg = json.loads(line)
            if "progress" in msg and progress is not None:
                progress(msgspec.convert(msg["progress"], TrainProgress))
            elif "result" in msg:
                result = msgspec.convert(msg["result"], TrainResult)
        await proc.wait()
    except asyncio.CancelledError:
        proc.kill()  # the job resumes from its last checkpoint next time
        raise
    stderr = (await err_task).decode(errors="replace")
    if proc.returncode != 0 or result is None:
        tail = stderr.strip().splitlines()[-3:]
        raise TrainingFailed(f"training job {job_path} exited with {proc.returncode}: {' | '.join(tail)}")
    return result


async def run_round(d: Distiller, terms: Distill, tenant: str, *, work_root: Path, adapters_root: Path,
                    base_model_dir: str, system: str = "",
                    progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train the next version of a tenant's student and decide what it does next (canary or reject)."""
    key = student_key(terms, tenant)
    state = d.state(key)
    pairs = await d.store.pairs(tenant if not terms.share_across_tenants else "*", terms.student,
                                limit=terms.max_examples)
    previous = str(adapters_root / state.adapter) if state.adapter else ""
    job = prepare_round(pairs, terms, key, state.version + 1, work_root=work_root, adapters_root=adapters_root,
                        base_model_dir=base_model_dir, resume_from=previous, system=system)
    await d.event(key, "training", state.stage, f"{len(pairs)} pairs, {terms.train_steps} steps",
                  {"pairs": float(len(pairs))})
    try:
        result = await run_job_in_child(Path(job.data_dir).parent / "job.json", progress)
    except TrainingFailed as exc:
        await d.event(key, "train_failed", state.stage, exc.message)
        raise
    figures = {"steps": float(result.steps), "seconds": result.elapsed_s, "loss": result.final_loss}
    if result.before is not None:
        figures["heldout_before"] = result.before.overall.agreed
    if result.after is not None:
        figures["heldout_after"] = result.after.overall.agreed
    trained = StudentState(student=key, tenant=state.tenant, stage="trained", adapter=Path(result.adapter_dir).name,
                           version=state.version + 1, heldout_before=figures.get("heldout_before"),
                           heldout_after=figures.get("heldout_after"))
    # A new version starts its own record; the old one keeps serving until this one clears the bar.
    verdict = decide(trained, terms)
    if verdict.action == "start_canary":
        d.states[key] = trained
    else:
        state.version = trained.version
    await d.event(key, "trained", "trained", f"v{trained.version}", figures)
    if verdict.action == "start_canary":
        await d.apply(key, verdict)
    else:  # rejected: the previous version (or the teacher) keeps serving
        await d.event(key, verdict.action, state.stage, verdict.reason, figures)
        await d.save(state)
    return result
