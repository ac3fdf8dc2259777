"""TEST FIXTURE, not the product: a toy decoder-only transformer with random weights.

The product's local model is a real one (``homeskillet.localmodel``: SmolLM2-135M-Instruct on
mlx-lm). This toy stays for tests of protocol plumbing (the Ollama node's wire format, SSH
tunnels, the Ollama connector's contract): it is fast, deterministic and its output is gibberish.
The weights are drawn from a seeded PRNG; every token still comes out of a real forward pass
(RMSNorm, rotary attention with a KV cache, SwiGLU, tied output head).

mlx is the ``[mlx]`` extra and is imported lazily: importing this module never needs it, loading
a model does (``require_mlx``). Tokens: bytes 0..255, then BOS and EOS. Sampled tokens are masked
to printable ASCII (or EOS), so every completion is valid text one character per token.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    import mlx.core as mx

__all__ = ["BOS", "EOS", "Generation", "TinyConfig", "TinyModel", "get_model", "require_mlx"]

BOS = 256
EOS = 257
_PRINTABLE = range(32, 127)
_MISSING = "local MLX inference needs the mlx extra: pip install 'homeskillet[mlx]'"
# Older mlx releases race on process-global maps when two threads evaluate at once, so every
# evaluation step of every model takes this lock; it is held per token, never across a yield.
_EVAL_LOCK = threading.Lock()
_KV = tuple["mx.array", "mx.array"]  # one layer's cached keys and values, (1, heads, seq, head_dim)


def require_mlx() -> ModuleType:
    """Import ``mlx.core`` (after the fast BLAS) or raise an error naming the extra to install."""
    from homeskillet.localmodel import prepare_blas

    prepare_blas()
    try:
        import mlx.core as mx_core
    except ImportError as exc:
        raise RuntimeError(_MISSING) from exc
    return mx_core


class TinyConfig(msgspec.Struct, kw_only=True, frozen=True):
    vocab_size: int = 258  # 256 bytes + BOS + EOS
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_seq: int = 256  # context window: prompt (truncated from the left) plus completion
    seed: int = 0
    name: str = "hs-tiny"

    def __post_init__(self) -> None:
        if self.vocab_size < EOS + 1:
            raise ValueError(f"vocab_size must be at least {EOS + 1} (bytes + BOS + EOS)")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError("dim must split into n_heads heads of even size (rotary embedding)")
        if self.n_layers < 1 or self.max_seq < 2:
            raise ValueError("need n_layers >= 1 and max_seq >= 2")


class Generation(msgspec.Struct, kw_only=True):
    text: str
    prompt_tokens: int  # tokens actually evaluated, after left truncation (BOS included)
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    load_ms: float  # cold-load time, reported by the first generation after load only
    prompt_eval_ms: float
    eval_ms: float


class _Stats:
    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: Literal["stop", "length"] = "length"
        self.prompt_eval_ms = 0.0
        self.eval_ms = 0.0


class TinyModel:
    """A seeded tiny transformer; ``load`` it, then ``generate`` or ``stream`` from any thread."""

    def __init__(self, config: TinyConfig, weights: dict[str, mx.array], load_ms: float) -> None:
        import mlx.core as mx

        self.config = config
        self.load_ms = load_ms
        self._w = weights
        self._head_dim = config.dim // config.n_heads
        bias = [0.0 if (t in _PRINTABLE or t == EOS) else float("-inf") for t in range(config.vocab_size)]
        self._mask = mx.array(bias)
        self._cold = threading.Lock()  # guards the one-shot report of load_ms
        self._cold_pending = True

    @classmethod
    def load(cls, config: TinyConfig | None = None) -> TinyModel:
        """Draw the weights from ``config.seed``: same config, same weights, on every machine."""
        config = config or TinyConfig()
        mx = require_mlx()
        start = time.perf_counter()
        d, hidden = config.dim, 4 * config.dim
        shapes: dict[str, tuple[int, ...]] = {"embed": (config.vocab_size, d)}
        for i in range(config.n_layers):
            shapes |= {f"{i}.{n}": (d, d) for n in ("wq", "wk", "wv", "wo")}
            shapes |= {f"{i}.w1": (d, hidden), f"{i}.w3": (d, hidden), f"{i}.w2": (hidden, d)}
        # An explicit key instead of mx.random.seed: no global RNG state touched, no races.
        keys = mx.random.split(mx.random.key(config.seed), len(shapes))
        weights = {
            name: mx.random.normal(shape, key=keys[k]) * shape[0] ** -0.5
            for k, (name, shape) in enumerate(shapes.items())
        }
        norms = [f"{i}.{n}" for i in range(config.n_layers) for n in ("attn_norm", "mlp_norm")]
        weights |= {name: mx.ones((d,)) for name in ["norm", *norms]}
        with _EVAL_LOCK:
            mx.eval(weights)
        return cls(config, weights, (time.perf_counter() - start) * 1000)

    # -- facts the node reports (Ollama /api/tags, /api/ps, /api/show) ------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def parameter_count(self) -> int:
        return sum(w.size for w in self._w.values())

    @property
    def size_bytes(self) -> int:
        return sum(w.nbytes for w in self._w.values())

    @property
    def size_vram(self) -> int:
        """Bytes in accelerator memory: all of it on a Metal GPU (unified memory), none on CPU."""
        import mlx.core as mx

        return self.size_bytes if mx.default_device() == mx.gpu else 0

    @property
    def context_length(self) -> int:
        return self.config.max_seq

    def encode(self, text: str) -> list[int]:
        """BOS followed by the UTF-8 bytes of ``text``."""
        return [BOS, *text.encode("utf-8")]

    def count_tokens(self, text: str) -> int:
        return len(text.encode("utf-8")) + 1

    # -- inference --------------------------------------------------------------------------
    def generate(
        self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, seed: int | None = None
    ) -> Generation:
        """Complete ``prompt``: greedy (deterministic) at temperature 0, sampled otherwise."""
        stats = _Stats()
        text = "".join(chr(t) for t in self._tokens(prompt, max_tokens, temperature, seed, stats))
        with self._cold:
            load_ms, self._cold_pending = (self.load_ms if self._cold_pending else 0.0), False
        return Generation(
            text=text,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            finish_reason=stats.finish_reason,
            load_ms=load_ms,
            prompt_eval_ms=stats.prompt_eval_ms,
            eval_ms=stats.eval_ms,
        )

    def stream(
        self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, seed: int | None = None
    ) -> Iterator[str]:
        """Yield the completion one character (= one token) at a time."""
        for token in self._tokens(prompt, max_tokens, temperature, seed, _Stats()):
            yield chr(token)

    def _tokens(
        self, prompt: str, max_tokens: int, temperature: float, seed: int | None, stats: _Stats
    ) -> Iterator[int]:
        import mlx.core as mx

        budget = max(0, min(max_tokens, self.config.max_seq - 1))
        ids = self.encode(prompt)
        keep = self.config.max_seq - budget
        if len(ids) > keep:  # left-truncate, but keep BOS so the model sees a sequence start
            ids = [BOS, *ids[len(ids) - keep + 1 :]]
        stats.prompt_tokens = len(ids)
        key = mx.random.key(seed if seed is not None else random.getrandbits(63)) if temperature > 0 else None
        cache: list[_KV | None] = [None] * self.config.n_layers
        start = time.perf_counter()
        feed, pos = ids, 0
        for step in range(budget):
            with _EVAL_LOCK:  # one token per acquisition: concurrent streams interleave fairly
                logits = self._forward(feed, cache, pos) + self._mask
                if key is None:
                    token = int(mx.argmax(logits).item())  # type: ignore[arg-type]
                else:
                    key, sub = mx.random.split(key)
                    token = int(mx.random.categorical(logits / temperature, key=sub).item())  # type: ignore[arg-type]
            now = time.perf_counter()
            if step == 0:
                stats.prompt_eval_ms, start = (now - start) * 1000, now
            stats.eval_ms = (now - start) * 1000
            if token == EOS:
                stats.finish_reason = "stop"
                return
            stats.completion_tokens += 1
            yield token
            pos += len(feed)
            feed = [token]

    def _forward(self, tokens: list[int], cache: list[_KV | None], pos: int) -> mx.array:
        """Logits for the token after ``tokens``; extends each layer's KV cache in place."""
        import mlx.core as mx

        w, n, hd = self._w, len(tokens), self._head_dim
        x = w["embed"][mx.array(tokens)][None]  # (1, n, dim)

        def heads(t: mx.array) -> mx.array:
            return t.reshape(1, n, self.config.n_heads, hd).transpose(0, 2, 1, 3)

        def rope(t: mx.array) -> mx.array:
            return mx.fast.rope(t, hd, traditional=False, base=10000.0, scale=1.0, offset=pos)

        for i in range(self.config.n_layers):
            h = mx.fast.rms_norm(x, w[f"{i}.attn_norm"], 1e-5)
            q, k = rope(heads(h @ w[f"{i}.wq"])), rope(heads(h @ w[f"{i}.wk"]))
            v = heads(h @ w[f"{i}.wv"])
            if (past := cache[i]) is not None:
                k, v = mx.concatenate([past[0], k], axis=2), mx.concatenate([past[1], v], axis=2)
            cache[i] = (k, v)
            mask: Any = "causal" if n > 1 else None
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=hd**-0.5, mask=mask)
            x = x + o.transpose(0, 2, 1, 3).reshape(1, n, -1) @ w[f"{i}.wo"]
            h = mx.fast.rms_norm(x, w[f"{i}.mlp_norm"], 1e-5)
            gate = h @ w[f"{i}.w1"]
            x = x + (gate * mx.sigmoid(gate) * (h @ w[f"{i}.w3"])) @ w[f"{i}.w2"]
        last = mx.fast.rms_norm(x[0, -1], w["norm"], 1e-5)
        return last @ w["embed"].T  # tied head


_MODELS: dict[TinyConfig, TinyModel] = {}
_MODELS_LOCK = threading.Lock()


def get_model(config: TinyConfig | None = None) -> TinyModel:
    """The process-wide model for ``config``, built on first use (once, even under threads)."""
    config = config or TinyConfig()
    with _MODELS_LOCK:
        if config not in _MODELS:
            _MODELS[config] = TinyModel.load(config)
        return _MODELS[config]
