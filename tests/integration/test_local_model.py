"""The real local model (SmolLM2-135M-Instruct on mlx-lm): conversion, runs, adapters, the
``mlx`` connector. Few generations, a handful of greedy tokens each: the model loads once per
session (``local_model``) and its conversion is cached in the state directory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from homeskillet.localmodel import AdapterRegistry, GenRequest, LocalModel, UnknownAdapter, split_model
from homeskillet.localmodel.blas import blas
from homeskillet.providers.base import InferRequest
from homeskillet.providers.mlx import MlxConnector
from homeskillet.scoring import model_served

FRANCE = [("user", "What is the capital of France?")]


def test_the_conversion_is_a_complete_mlx_lm_directory(local_model: LocalModel) -> None:
    assert local_model.path is not None
    config = json.loads((local_model.path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (576, 30, 9, 3, 49152)
    assert config["tie_word_embeddings"] and config["rope_theta"] == 100000.0
    tok = json.loads((local_model.path / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and "<|im_start|>" in tok["chat_template"]
    assert local_model.quantization == "F32" and 130e6 < local_model.parameter_count < 140e6
    assert local_model.count_tokens("2024") == 4  # digits one by one, as SmolLM2's pre-tokenizer does


def test_a_fast_blas_is_loaded_where_the_machine_has_one() -> None:
    choice = blas()
    assert choice is not None  # conftest prepared it before any mlx import
    if Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0").exists():
        assert choice.fast, choice


def test_stream_yields_pieces_then_the_counts(local_model: LocalModel) -> None:
    run = local_model.run(GenRequest(messages=FRANCE, max_tokens=8))
    pieces = list(run)
    assert run.result is not None and "".join(pieces) == run.result.text
    assert "Paris" in run.result.text and len(pieces) == run.result.completion_tokens  # one piece per token
    assert run.result.finish_reason == "stop" and run.result.logprob_mean is not None
    assert run.result.logprob_mean < 0


async def test_concurrent_runs_take_turns_on_one_thread(local_model: LocalModel) -> None:
    long, short = (local_model.arun(GenRequest(messages=[("user", p)], max_tokens=n))
                   for p, n in (("Write a poem about the sea.", 12), ("What is 2+2?", 3)))
    order: list[str] = []

    async def drain(tag: str, run: object) -> None:
        async for _ in run:  # type: ignore[attr-defined]
            order.append(tag)

    await asyncio.gather(drain("long", long), drain("short", short))
    # Round robin: the short run finished long before the long one did, not after it.
    assert order.index("short") < 4 and order[-1] == "long" and order.count("short") <= 3


def _make_adapter(local_model: LocalModel, where: Path) -> Path:
    """A LoRA adapter as mlx_lm.lora writes one, with non-zero B so it changes the output."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    assert local_model.path is not None
    params = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    model, _ = load_model(local_model.path, lazy=True)
    linear_to_lora_layers(model, 2, params)
    lora = {k: (mx.random.normal(v.shape, key=mx.random.key(1)) * 0.5 if k.endswith("lora_b") else v)
            for k, v in tree_flatten(model.parameters()) if k.endswith(("lora_a", "lora_b"))}
    where.mkdir(parents=True)
    mx.save_safetensors(str(where / "adapters.safetensors"), lora)
    (where / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params}))
    return where


def test_adapters_are_served_over_the_base_without_merging(local_model: LocalModel, tmp_path: Path) -> None:
    req = GenRequest(messages=FRANCE, max_tokens=6)
    base = local_model.generate(req).text
    local_model.adapters.register("loud", _make_adapter(local_model, tmp_path / "loud"))
    with_adapter = local_model.generate(msgspec.structs.replace(req, adapter="loud")).text
    assert with_adapter != base
    assert local_model.generate(req).text == base  # the base weights were not touched
    with pytest.raises(UnknownAdapter, match="no LoRA adapter named 'absent'"):
        local_model.generate(msgspec.structs.replace(req, adapter="absent"))


def test_adapter_registry_names_and_watch_dir(tmp_path: Path) -> None:
    d = tmp_path / "student-1"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapters.safetensors").write_bytes(b"")
    reg = AdapterRegistry(watch_dir=tmp_path)
    assert reg.path("student-1") == d and reg.names() == ["student-1"]  # found without registering
    with pytest.raises(UnknownAdapter):
        reg.path("student-2")
    assert split_model("smollm2-135m+student-1") == ("smollm2-135m", "student-1")
    assert model_served(["smollm2-135m", "smollm2-135m+*"], "smollm2-135m+student-1")
    assert not model_served(["smollm2-135m"], "smollm2-135m+student-1")


async def test_the_mlx_connector_streams_real_tokens(local_model: LocalModel) -> None:
    conn = MlxConnector()
    req = InferRequest(strike_id="s", model="smollm2-135m", prompt="What is the capital of France?", max_tokens=8)
    pieces = [p async for p in conn.stream(req)]
    res = await conn.infer(req)
    assert len(pieces) > 3 and "".join(pieces) == res.text and "Paris" in res.text
    assert res.completion_tokens == len(pieces) and res.prompt_tokens > 20 and res.logprob_mean is not None
    health = await conn.health()
    assert health.ok and health.warm_models == ["smollm2-135m"]
