"""Train: LoRA on the student with mlx-lm's tuner, as a resumable job.

A ``TrainJob`` is everything a run needs, as data, so the job can run here (a child process the
distiller starts, ``python -m homeskillet.distill.train JOB.json``, printing one JSON progress line
per report) or be struck on a rented pool with the same spec: that is the seam for remote training.

Layout of one adapter version (what mlx-lm's ``load_adapters`` and ``mlx_lm.load(adapter_path=)`` read):

```
<adapter_dir>/adapter_config.json    fine_tune_type, num_layers, lora_parameters
<adapter_dir>/adapters.safetensors   the final weights
<adapter_dir>/runs/<n>/…             checkpoints of attempt n (every ``save_every`` steps)
<adapter_dir>/progress.json          steps done, so an interrupted job resumes from its last checkpoint
```

The base weights are never changed: adapters stay separate (merging one into the base ruined the
model's general answers in the real-models probe).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..wire import Distill, DistillPair
from .evaluate import Evaluation, evaluate

__all__ = ["TrainJob", "TrainProgress", "TrainResult", "run_job"]


class TrainJob(msgspec.Struct, frozen=True, kw_only=True):
    student: str
    base_model_dir: str  # an mlx-lm model directory
    data_dir: str  # train.jsonl and valid.jsonl (dataset.write_jsonl), read by mlx-lm's loader
    adapter_dir: str  # where this version's adapter goes
    resume_from: str = ""  # a previous version's adapter_dir: this run starts from its weights
    steps: int = 50
    rank: int = 8
    scale: float = 20.0
    num_layers: int = 0  # transformer blocks from the top that get LoRA; 0 = every block
    batch_size: int = 4
    learning_rate: float = 2e-4
    max_seq_length: int = 512
    save_every: int = 10
    seed: int = 0
    # Held-out evaluation in the same process (the model is loaded once): the base student first,
    # then the trained one. heldout_path: JSONL of DistillPair; groups_path: {pair_id: group} JSON.
    heldout_path: str = ""
    groups_path: str = ""
    measure: str = "exact"
    semantic_threshold: float = 0.8
    eval_max_tokens: int = 16
    system: str = ""


class TrainProgress(msgspec.Struct, frozen=True, kw_only=True):
    student: str
    step: int
    steps: int
    loss: float
    tokens_per_s: float
    elapsed_s: float


class TrainResult(msgspec.Struct, frozen=True, kw_only=True):
    student: str
    adapter_dir: str
    steps: int
    resumed_at: int  # 0 for a fresh run
    final_loss: float
    elapsed_s: float  # training only
    before: Evaluation | None = None  # the base student on the held-out pairs
    after: Evaluation | None = None  # the trained student on the same pairs


def _adapter_config(job: TrainJob) -> dict[str, Any]:
    return {"fine_tune_type": "lora", "num_layers": job.num_layers, "model": job.base_model_dir,
            "lora_parameters": {"rank": job.rank, "scale": job.scale, "dropout": 0.0}}


def _latest_checkpoint(adapter_dir: Path) -> tuple[int, Path | None]:
    """Steps already done and the checkpoint holding them (from progress.json, if its file exists)."""
    try:
        done = json.loads((adapter_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return 0, None
    ckpt = Path(done.get("checkpoint", ""))
    return (int(done.get("step", 0)), ckpt) if ckpt.is_file() else (0, None)


def run_job(job: TrainJob, progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train (or resume) one adapter version. Blocking and CPU-heavy: run it in a child process."""
    from ..localmodel import prepare_blas

    prepare_blas()  # a fast BLAS before mlx is imported
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    out = Path(job.adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    done, ckpt = _latest_checkpoint(out)
    if done >= job.steps and (out / "adapters.safetensors").is_file():
        return TrainResult(student=job.student, adapter_dir=str(out), steps=job.steps, resumed_at=done,
                           final_loss=float("nan"), elapsed_s=0.0)
    mx.random.seed(job.seed)
    loaded = load(job.base_model_dir)
    model, tokenizer = loaded[0], loaded[1]
    model.freeze()
    config = _adapter_config(job)
    blocks = len(model.layers) if job.num_layers <= 0 else min(job.num_layers, len(model.layers))
    config["num_layers"] = blocks
    linear_to_lora_layers(model, blocks, config["lora_parameters"])
    start_from = ckpt or (Path(job.resume_from) / "adapters.safetensors" if job.resume_from else None)
    if start_from is not None:
        model.load_weights(str(start_from), strict=False)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    heldout = _heldout(job)
    before = heldout(model, tokenizer, "") if start_from is None else None  # LoRA starts at zero: the base

    ns = type("DataArgs", (), {"mask_prompt": True, "chat_feature": "messages"})()
    train_set, valid_set, _ = load_local_dataset(Path(job.data_dir), tokenizer, ns)  # type: ignore[arg-type]
    if len(train_set) == 0:
        raise ValueError(f"{job.data_dir}/train.jsonl has no examples: capture pairs first")
    run_dir = out / "runs" / str(len(list((out / "runs").glob("*"))) if (out / "runs").exists() else 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    remaining = job.steps - done
    began = time.monotonic()
    last_loss = [float("nan")]

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            step = done + int(info["iteration"])
            last_loss[0] = float(info["train_loss"])
            checkpoint = run_dir / f"{int(info['iteration']):07d}_adapters.safetensors"
            if checkpoint.is_file():
                (out / "progress.json").write_text(json.dumps({"step": step, "checkpoint": str(checkpoint)}))
            if progress is not None:
                progress(TrainProgress(student=job.student, step=step, steps=job.steps, loss=last_loss[0],
                                       tokens_per_s=float(info.get("tokens_per_second", 0.0)),
                                       elapsed_s=time.monotonic() - began))

    args = TrainingArgs(batch_size=job.batch_size, iters=remaining, val_batches=0,
                        steps_per_report=job.save_every, steps_per_eval=remaining + 1, steps_per_save=job.save_every,
                        adapter_file=str(run_dir / "adapters.safetensors"), max_seq_length=job.max_seq_length)
    train(model=model, optimizer=optim.Adam(learning_rate=job.learning_rate), train_dataset=CacheDataset(train_set),
          val_dataset=CacheDataset(valid_set), args=args, training_callback=Report())
    os.replace(run_dir / "adapters.safetensors", out / "adapters.safetensors")
    (out / "progress.json").write_text(json.dumps({"step": job.steps, "checkpoint": str(out / "adapters.safetensors")}))
    elapsed = time.monotonic() - began
    return TrainResult(student=job.student, adapter_dir=str(out), steps=job.steps, resumed_at=done,
                       final_loss=last_loss[0], elapsed_s=elapsed, before=before,
                       after=heldout(model, tokenizer, str(out)))


def _heldout(job: TrainJob) -> Callable[[Any, Any, str], Evaluation | None]:
    """Score a loaded model (base or with its adapter) on the job's held-out pairs, greedy."""
    if not job.heldout_path:
        return lambda model, tokenizer, adapter: None
    pairs = [msgspec.json.decode(line, type=DistillPair)
             for line in Path(job.heldout_path).read_bytes().splitlines() if line.strip()]
    groups = json.loads(Path(job.groups_path).read_text()) if job.groups_path else None
    terms = Distill(student=job.student, agreement="semantic" if job.measure == "semantic" else "exact",
                    semantic_threshold=job.semantic_threshold)
    embed = None
    if job.measure == "semantic":
        from ..embeddings import MiniLMEmbedder

        embed = MiniLMEmbedder()

    def score(model: Any, tokenizer: Any, adapter: str) -> Evaluation:
        from mlx_lm import generate

        def answer(messages: list[dict[str, str]]) -> str:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            return str(generate(model, tokenizer, prompt=prompt, max_tokens=job.eval_max_tokens, verbose=False))

        return evaluate(pairs, answer, terms, adapter=adapter, embed=embed, groups=groups, system=job.system)

    return score


def main(argv: list[str] | None = None) -> int:
    """``python -m homeskillet.distill.train JOB.json``: progress and the result as JSON lines."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m homeskillet.distill.train JOB.json", file=sys.stderr)
        return 2
    job = msgspec.json.decode(Path(args[0]).read_bytes(), type=TrainJob)

    def emit(p: TrainProgress) -> None:
        print(msgspec.json.encode({"progress": p}).decode(), flush=True)

    result = run_job(job, emit)
    print(msgspec.json.encode({"result": result}).decode(), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip mlx's C++ teardown, which can abort a finished process (localmodel.engine)


if __name__ == "__main__":
    raise SystemExit(main())
