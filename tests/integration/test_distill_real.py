"""A distillation round on the real local model, kept tiny (a few steps, a few held-out tickets):
the job runs in a child process as the distiller runs it, the base student is scored first, the
adapter it writes is one mlx-lm reads, and a local pool serves it by name beside the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeskillet.distill.pipeline import prepare_round, run_job_in_child
from homeskillet.localmodel import GenRequest, LocalModel
from homeskillet.sims.families import SYSTEM, as_pairs, triage
from homeskillet.wire import Distill


@pytest.mark.timeout(600)
async def test_a_few_step_round_scores_the_base_first_and_writes_a_servable_adapter(
        local_model: LocalModel, tmp_path: Path) -> None:
    assert local_model.path is not None
    train, held = triage(24, 4, seed=3)
    terms = Distill(student="triage-s", train_steps=3, batch_size=4, validation_split=0.25, confidence_threshold=0.9)
    captured = as_pairs(train + held, "acme", "triage-s", confidence=0.95)
    job = prepare_round(captured, terms, "triage-s.acme", 1, work_root=tmp_path / "work",
                        adapters_root=tmp_path / "adapters", base_model_dir=str(local_model.path), system=SYSTEM)
    heldout = [json.loads(line) for line in Path(job.heldout_path).read_text().splitlines()]
    trained_on = [json.loads(line)["messages"][-2]["content"] for line in
                  (Path(job.data_dir) / "train.jsonl").read_text().splitlines()]
    assert heldout and not {h["prompt"] for h in heldout} & set(trained_on)  # held out means never trained on
    seen: list[int] = []
    result = await run_job_in_child(Path(job.data_dir).parent / "job.json", lambda p: seen.append(p.step))
    assert result.steps == 3 and seen and seen[-1] == 3
    assert result.before is not None and result.after is not None  # the base student's score comes first
    assert result.before.overall.n == result.after.overall.n == len(heldout)
    adapter = Path(result.adapter_dir)
    assert adapter.name == "triage-s.acme-v1"
    assert json.loads((adapter / "adapter_config.json").read_text())["fine_tune_type"] == "lora"
    assert (adapter / "adapters.safetensors").stat().st_size > 0
    # Served by name over the one base model, which itself is unchanged.
    local_model.adapters.register(adapter.name, adapter)
    ask = [("system", SYSTEM), ("user", held[0].prompt)]
    base_before = await local_model.arun(GenRequest(messages=ask, max_tokens=4)).atext()
    student = await local_model.arun(GenRequest(messages=ask, max_tokens=4, adapter=adapter.name)).atext()
    base_after = await local_model.arun(GenRequest(messages=ask, max_tokens=4)).atext()
    assert student.text and base_after.text == base_before.text
