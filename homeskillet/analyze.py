"""Analysis: a query becomes fragments, through a pipeline of small pure steps.

Each step takes and returns an ``Analysis``; the pipeline is a plain list, so a step can be
tested as a pure call and a deployment can reorder or replace steps. First version: a query
holding several separate questions becomes one fragment per question, struck in parallel and
fused in order; anything else is one fragment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from .sims.base import count_tokens
from .wire import Covenant, Fragment, Message, Query

__all__ = ["DEFAULT_PIPELINE", "Analysis", "analyze", "fingerprint", "fragment_hash", "split_questions"]


class Analysis(msgspec.Struct, kw_only=True):
    query_id: str
    model: str
    max_tokens: int
    temperature: float
    prompt: str  # the part to decompose: the prompt, or the last user message
    context: list[Message]  # everything else, sent with every fragment
    parts: list[str] = []
    max_fragments: int = 16


Step = Callable[[Analysis], Analysis]

_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$")
_QUESTION = re.compile(r"[^?]*\?")


def split_questions(a: Analysis) -> Analysis:
    """Numbered or bulleted items, or several sentences that each end in '?', are separate."""
    if a.prompt.count("?") < 2 and len(a.prompt.splitlines()) < 2:
        # One line with at most one question (most prompts) cannot split: skip the regexes.
        return msgspec.structs.replace(a, parts=[a.prompt.strip()])
    return _split(a)


def _split(a: Analysis) -> Analysis:
    lines = [ln for ln in a.prompt.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := _NUMBERED.match(ln))]
    if len(items) >= 2 and len(items) == len(lines):
        parts = items
    else:
        questions = [q.strip() for q in _QUESTION.findall(a.prompt) if q.strip()]
        rest = _QUESTION.sub("", a.prompt).strip()
        parts = questions if len(questions) >= 2 and not rest else [a.prompt.strip()]
    if len(parts) > a.max_fragments:  # too many to strike separately: keep the query whole
        parts = [a.prompt.strip()]
    return msgspec.structs.replace(a, parts=parts)


DEFAULT_PIPELINE: Sequence[Step] = (split_questions,)


def fragment_hash(content: str, model: str) -> str:
    canonical = " ".join(content.split()).lower()
    return hashlib.sha256(f"{model}\x00{canonical}".encode()).hexdigest()


_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)
_ALL = (1 << 64) - 1
_NUMPY_FROM = 64  # shingles; below this numpy's per-call overhead costs more than the voting itself


def _majority_bitsliced(hashes: list[int]) -> int:
    """The bits set in more than half of ``hashes``, all 64 positions at once: the per-position
    counts are kept bit-sliced (``planes[k]`` holds bit k of every count) and grown by ripple-carry
    addition, then compared with the threshold from the top bit down. No per-bit Python loop."""
    planes: list[int] = []
    for h in hashes:
        carry = h
        for k, p in enumerate(planes):
            planes[k] = p ^ carry
            carry &= p
            if not carry:
                break
        else:
            if carry:
                planes.append(carry)
    need = len(hashes) // 2 + 1  # count * 2 > n  <=>  count >= n // 2 + 1
    greater, equal = 0, _ALL
    for k in range(max(len(planes), need.bit_length()) - 1, -1, -1):
        p = planes[k] if k < len(planes) else 0
        if need >> k & 1:
            equal &= p
        else:
            greater |= equal & p
            equal &= ~p
    return greater | equal


def _majority_numpy(hashes: list[int]) -> int:
    arr = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    votes = ((arr[:, None] & _BITS) != 0).sum(axis=0) * 2 > len(hashes)
    return int(_BITS[votes].sum())


def fingerprint(content: str) -> int:
    """64-bit simhash over word 3-shingles: near-identical prompts get near-identical sketches.
    One hash per shingle in Python; the bit voting bit-sliced on ints for short prompts (the
    common case, where numpy's call overhead dominated the analysis), in numpy for long ones."""
    words = content.lower().split()
    shingles = [" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))] or [""]
    hashes = [int.from_bytes(hashlib.blake2b(sh.encode(), digest_size=8).digest(), "big") for sh in shingles]
    return _majority_numpy(hashes) if len(hashes) >= _NUMPY_FROM else _majority_bitsliced(hashes)


def analyze(query: Query, cov: Covenant, *, pipeline: Sequence[Step] = DEFAULT_PIPELINE,
            max_fragments: int = 16) -> list[Fragment]:
    """The query's fragments under ``cov`` (the query must already be validated)."""
    if query.messages:
        last_user = max(i for i, m in enumerate(query.messages) if m.role == "user")
        prompt = query.messages[last_user].content
        context = [m for i, m in enumerate(query.messages) if i != last_user]
    else:
        prompt, context = query.prompt or "", []
    a = Analysis(query_id=query.query_id, model=cov.resources.model, max_tokens=cov.max_tokens,
                 temperature=query.temperature, prompt=prompt, context=context, max_fragments=max_fragments)
    for step in pipeline:
        a = step(a)
    return [
        Fragment(
            fragment_id=f"{a.query_id}.{i}", query_id=a.query_id, index=i, prompt=part, context=a.context,
            model=a.model, hash=fragment_hash(part, a.model), fingerprint=fingerprint(part),
            prompt_tokens=count_tokens(part) + sum(count_tokens(m.content) for m in a.context),
            max_tokens=a.max_tokens, temperature=a.temperature,
        )
        for i, part in enumerate(a.parts)
    ]
