"""Captured pairs → a training set: filter by the teacher's confidence, split (seeded), JSONL.

The JSONL is OpenAI's chat fine-tuning format (``{"messages": [...]}`` per line), which mlx-lm's
``ChatDataset``, OpenAI and most trainers read. The split is by pair id, so it is the same for the
same pairs whatever order they were captured in, and a pair never moves between train and valid
when more pairs arrive (held-out stays held out).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..wire import DistillPair

__all__ = ["Split", "split_pairs", "to_chat_record", "trainable", "write_jsonl"]


class Split(msgspec.Struct, frozen=True, kw_only=True):
    train: list[DistillPair]
    valid: list[DistillPair]


def trainable(pairs: Iterable[DistillPair], threshold: float) -> list[DistillPair]:
    """Pairs whose teacher was sure enough. No evidence of confidence trains only at threshold 0."""
    return [p for p in pairs if p.teacher_text.strip()
            and (threshold <= 0.0 or (p.teacher_confidence is not None and p.teacher_confidence >= threshold))]


def _bucket(pair_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: Sequence[DistillPair], validation_split: float, seed: int = 0) -> Split:
    """Seeded, stable split: a pair's side depends only on its id and the seed."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split {validation_split} is outside [0, 1)")
    train: list[DistillPair] = []
    valid: list[DistillPair] = []
    for p in pairs:
        (valid if _bucket(p.pair_id, seed) < validation_split else train).append(p)
    return Split(train=train, valid=valid)


def to_chat_record(pair: DistillPair, system: str = "") -> dict[str, Any]:
    """One pair as a chat fine-tuning record: the conversation, then the teacher's answer."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": m.role, "content": m.content} for m in pair.context]
    messages += [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.teacher_text}]
    return {"messages": messages}


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (a reader never sees half a file); returns how many."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n
