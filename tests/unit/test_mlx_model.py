"""TinyModel: real MLX inference on CPU with a seeded random transformer and byte tokens."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from homeskillet.providers import mlx_model
from homeskillet.providers.mlx_model import BOS, TinyConfig, TinyModel, get_model

PROMPT = "Covenants first: $(rm -rf /); `id` | && ; 'quotes' \"dq\" — ünïcødé"


@pytest.fixture(scope="module")
def model() -> TinyModel:
    return get_model()


def test_greedy_is_deterministic(model: TinyModel) -> None:
    first = model.generate(PROMPT, max_tokens=24)
    assert model.generate(PROMPT, max_tokens=24).text == first.text
    # A fresh model built from the same config has the same weights, hence the same text.
    assert TinyModel.load(TinyConfig()).generate(PROMPT, max_tokens=24).text == first.text


def test_different_seed_different_weights(model: TinyModel) -> None:
    other = TinyModel.load(TinyConfig(seed=1))
    assert other.generate(PROMPT, max_tokens=24).text != model.generate(PROMPT, max_tokens=24).text


def test_sampling_is_reproducible_with_a_seed(model: TinyModel) -> None:
    a = model.generate(PROMPT, max_tokens=24, temperature=1.0, seed=7)
    b = model.generate(PROMPT, max_tokens=24, temperature=1.0, seed=7)
    assert a.text == b.text
    samples = {model.generate(PROMPT, max_tokens=24, temperature=1.5, seed=s).text for s in range(4)}
    assert len(samples) > 1


@pytest.mark.parametrize("temperature", [0.0, 0.7, 2.0])
def test_output_is_printable_ascii(model: TinyModel, temperature: float) -> None:
    text = model.generate(PROMPT, max_tokens=48, temperature=temperature, seed=3).text
    assert text.isascii() and text.isprintable()


def test_token_counts(model: TinyModel) -> None:
    gen = model.generate(PROMPT, max_tokens=16)
    assert gen.prompt_tokens == len(PROMPT.encode("utf-8")) + 1 == model.count_tokens(PROMPT)
    assert model.encode(PROMPT)[0] == BOS
    assert gen.completion_tokens == len(gen.text)  # one byte per token
    assert gen.finish_reason in ("stop", "length")
    assert gen.prompt_eval_ms > 0 and gen.eval_ms >= 0 and gen.load_ms >= 0


@pytest.mark.parametrize("max_tokens", [0, 1, 5, 33])
def test_max_tokens_respected(model: TinyModel, max_tokens: int) -> None:
    gen = model.generate("abc", max_tokens=max_tokens)
    assert gen.completion_tokens <= max_tokens
    if gen.finish_reason == "length":
        assert gen.completion_tokens == max_tokens


def test_stream_matches_generate(model: TinyModel) -> None:
    pieces = list(model.stream(PROMPT, max_tokens=20))
    assert "".join(pieces) == model.generate(PROMPT, max_tokens=20).text
    assert all(len(p) == 1 for p in pieces)


def test_kv_cache_matches_full_recompute(model: TinyModel) -> None:
    # White-box: the cached decode must pick the same tokens as re-running the whole sequence.
    import mlx.core as mx

    ids = model.encode(PROMPT)
    for _ in range(8):
        logits = model._forward(ids, [None] * model.config.n_layers, 0) + model._mask
        ids.append(int(mx.argmax(logits).item()))  # type: ignore[arg-type]
    recomputed = "".join(chr(t) for t in ids[model.count_tokens(PROMPT) :])
    assert model.generate(PROMPT, max_tokens=8).text == recomputed


def test_long_prompt_is_truncated_from_the_left(model: TinyModel) -> None:
    cfg = model.config
    long = "lorem ipsum " * 500
    gen = model.generate(long, max_tokens=10)
    assert gen.prompt_tokens == cfg.max_seq - 10
    # Only the tail matters after truncation: a different head gives the same answer.
    assert model.generate("X" * 400 + long, max_tokens=10).text == gen.text
    # Asking for more than the window fits still answers, clamped to the context.
    huge = model.generate(long, max_tokens=10_000)
    assert huge.prompt_tokens + huge.completion_tokens <= cfg.max_seq


def test_load_time_is_reported_once() -> None:
    fresh = TinyModel.load(TinyConfig(seed=42))
    assert fresh.generate("a", max_tokens=1).load_ms == fresh.load_ms > 0
    assert fresh.generate("a", max_tokens=1).load_ms == 0.0


def test_concurrent_threads_get_the_same_answers(model: TinyModel) -> None:
    prompts = [f"prompt {i}: {PROMPT}" for i in range(4)]
    expected = [model.generate(p, max_tokens=24).text for p in prompts]
    start = threading.Barrier(len(prompts))

    def run(prompt: str) -> list[str]:
        start.wait(timeout=10)  # all threads enter generate together
        return [model.generate(prompt, max_tokens=24).text for _ in range(3)]

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        results = list(pool.map(run, prompts))
    assert results == [[text] * 3 for text in expected]


def test_get_model_builds_once_per_config() -> None:
    cfg = TinyConfig(seed=99, name="hs-cache-test")
    with ThreadPoolExecutor(max_workers=4) as pool:
        models = list(pool.map(lambda _: get_model(cfg), range(8)))
    assert all(m is models[0] for m in models)
    assert get_model(TinyConfig(seed=98)) is not models[0]


def test_speed_32_tokens_under_a_second(model: TinyModel) -> None:
    start = time.perf_counter()
    gen = model.generate(PROMPT, max_tokens=32)
    assert time.perf_counter() - start < 1.0
    assert gen.completion_tokens == 32 or gen.finish_reason == "stop"


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        TinyConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError):
        TinyConfig(vocab_size=100)


def test_missing_mlx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes ``import mlx.core`` raise ImportError.
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(RuntimeError, match=r"pip install 'homeskillet\[mlx\]'"):
        mlx_model.require_mlx()


def test_module_imports_without_mlx() -> None:
    code = (
        "import sys; sys.modules['mlx'] = None; sys.modules['mlx.core'] = None\n"
        "from homeskillet.providers import mlx_model\n"
        "print(mlx_model.TinyConfig().name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "hs-tiny"
