"""One job: turn a llama-architecture GGUF file into an mlx-lm model directory.

``mlx.core.load`` reads the GGUF (tensors still block-quantized, tokenizer and chat template in
the metadata). The directory written here is what ``mlx_lm.load`` reads offline:

- ``model.safetensors``: float32 weights under the Llama names (dequantized: on a CPU, float16 and
  4-bit matmuls are 10–35× slower than float32 with a fast BLAS), with llama.cpp's row permutation
  of the Q and K projections undone (without that the first token is ``<|im_end|>``);
- ``config.json`` (``model_type`` llama, sizes from the metadata, tied embeddings);
- ``tokenizer.json``: byte-level BPE from the vocab and merges, digits split one by one before the
  byte-level pre-tokenizer (the ``smollm`` pre-tokenizer), control tokens as special tokens;
- ``tokenizer_config.json`` with the GGUF's chat template and its special tokens.

The conversion is atomic (written to a temporary sibling, then renamed) and locked (``flock`` on a
file beside the target), so two processes starting at once convert once and both load the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import HomeskilletError

__all__ = ["ConversionError", "convert_gguf", "ensure_converted"]

# GGUF block names → Llama module names.
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GROUP = 32  # GGUF's block size for the Q4/Q5/Q8 formats mlx reads
_CONTROL = 3  # tokenizer.ggml.token_type of a control token
_DONE = "config.json"  # written last: its presence means the directory is complete


class ConversionError(HomeskilletError):
    code = "model_conversion"


def ensure_converted(gguf: Path, target: Path) -> Path:
    """``target`` as an mlx-lm model directory, converting ``gguf`` into it on first use only."""
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if not (target / _DONE).is_file():  # another process may have finished while we waited
            convert_gguf(gguf, target)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Write the mlx-lm directory for ``gguf`` at ``target`` (replacing a partial one)."""
    from .blas import prepare_blas

    prepare_blas()
    import mlx.core as mx

    if not gguf.is_file():
        raise ConversionError(f"no GGUF file at {gguf}")
    loaded: Any = mx.load(str(gguf), return_metadata=True)
    tensors, meta = loaded
    arch = _text(meta, "general.architecture")
    if arch != "llama":
        raise ConversionError(f"{gguf}: architecture {arch!r}; only llama-architecture GGUF files are converted")
    config = _config(meta)
    weights = _weights(tensors, config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        del weights
        _tokenizer(meta).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(meta, config), indent=1))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "name": _text(meta, "general.name")}))
        (tmp / _DONE).write_text(json.dumps(config, indent=1))
        if target.exists():  # a partial directory from a crash before the rename: not ours to keep
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _num(meta: dict[str, Any], key: str) -> Any:
    try:
        return meta[key].item()
    except KeyError:
        raise ConversionError(f"the GGUF metadata has no {key!r}") from None


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def _config(meta: dict[str, Any]) -> dict[str, Any]:
    hidden, heads = _num(meta, "llama.embedding_length"), _num(meta, "llama.attention.head_count")
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": _num(meta, "llama.block_count"),
        "intermediate_size": _num(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _num(meta, "llama.attention.head_count_kv"),
        "head_dim": meta["llama.rope.dimension_count"].item() if "llama.rope.dimension_count" in meta
        else hidden // heads,
        "rms_norm_eps": float(_num(meta, "llama.attention.layer_norm_rms_epsilon")),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "rope_theta": float(meta["llama.rope.freq_base"].item()) if "llama.rope.freq_base" in meta else 10000.0,
        "max_position_embeddings": _num(meta, "llama.context_length"),
        "tie_word_embeddings": True,  # set below from the tensors
        "bos_token_id": _num(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _num(meta, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }


def _weights(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    import mlx.core as mx

    def dense(base: str) -> Any:
        w = tensors[f"{base}.weight"]
        if f"{base}.scales" not in tensors:
            return w.astype(mx.float32)
        scales, biases = tensors[f"{base}.scales"], tensors[f"{base}.biases"]
        bits = w.shape[-1] // scales.shape[-1]  # 32-bit words per group of 32 values = bits per value
        return mx.dequantize(w, scales, biases, group_size=_GROUP, bits=bits).astype(mx.float32)

    def unpermute(w: mx.array, heads: int) -> mx.array:
        # llama.cpp interleaves each head's rotary halves; mlx-lm's Llama expects them split.
        return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    out: dict[str, mx.array] = {}
    for key in tensors:
        if not key.endswith(".weight"):
            continue
        base = key.removesuffix(".weight")
        parts = base.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _BLOCK:
            w = dense(base)
            if parts[2] == "attn_q":
                w = unpermute(w, config["num_attention_heads"])
            elif parts[2] == "attn_k":
                w = unpermute(w, config["num_key_value_heads"])
            out[f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.weight"] = w
        elif base in _TOP:
            out[f"{_TOP[base]}.weight"] = dense(base)
        else:
            raise ConversionError(f"unexpected tensor {key!r} in a llama GGUF")
    config["tie_word_embeddings"] = "lm_head.weight" not in out
    mx.eval(out)
    return out


def _tokenizer(meta: dict[str, Any]) -> Any:
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise ConversionError("converting a GGUF needs `tokenizers`: pip install 'homeskillet[mlx]'") from None
    if _text(meta, "tokenizer.ggml.model") != "gpt2":
        raise ConversionError(f"tokenizer {_text(meta, 'tokenizer.ggml.model')!r}: only byte-level BPE (gpt2) "
                              "GGUF tokenizers are converted")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                               byte_fallback=False))
    split: list[Any] = [pre_tokenizers.Digits(individual_digits=True)] if _text(meta, "tokenizer.ggml.pre") in (
        "smollm", "llama-bpe", "llama3") else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                 use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kinds = [int(k) for k in meta["tokenizer.ggml.token_type"].tolist()]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, kinds, strict=True) if kind == _CONTROL])
    return tok


def _tokenizer_config(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str, default: int) -> str:
        return str(tokens[meta[key].item() if key in meta else default])

    out = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id", config["bos_token_id"]),
        "eos_token": token("tokenizer.ggml.eos_token_id", config["eos_token_id"]),
        "unk_token": token("tokenizer.ggml.unknown_token_id", 0),
        "pad_token": token("tokenizer.ggml.padding_token_id", config["eos_token_id"]),
        "model_max_length": config["max_position_embeddings"],
        "add_bos_token": bool(meta["tokenizer.ggml.add_bos_token"].item()) if "tokenizer.ggml.add_bos_token"
        in meta else False,
        "clean_up_tokenization_spaces": False,
    }
    if template := _text(meta, "tokenizer.chat_template"):
        out["chat_template"] = template
    return out
