"""Evaluate: the student's agreement with the teacher on held-out pairs it never trained on.

Both measures are reported (exact match after normalisation, and the MiniLM cosine when an
embedder is given), with the covenant's own measure deciding ``agreed``. Held-out pairs may carry
a ``group`` (e.g. ``unseen_wording``) so a report can show agreement on wordings never trained on
apart from the rest. The student is whatever ``answer`` calls: the local pool's engine with an
adapter, or the base model for the "before" figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from ..wire import Distill, DistillPair
from .agreement import Embed, agree
from .dataset import to_chat_record

__all__ = ["Answerer", "Evaluation", "GroupScore", "evaluate"]

# messages (OpenAI chat shape, without the answer) → the student's answer
Answerer = Callable[[list[dict[str, str]]], str]


class GroupScore(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    exact: float  # share equal after normalisation
    agreed: float  # share agreeing by the covenant's measure
    semantic: float | None = None  # mean cosine, when an embedder was given


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    student: str
    adapter: str  # "" = the base model
    measure: str
    threshold: float
    overall: GroupScore
    groups: dict[str, GroupScore] = {}
    samples: list[tuple[str, str, str]] = []  # a few (prompt, teacher, student) for the report


def _score(rows: Sequence[tuple[bool, bool, float | None]]) -> GroupScore:
    n = len(rows)
    sem = [s for _, _, s in rows if s is not None]
    return GroupScore(n=n, exact=sum(e for e, _, _ in rows) / n if n else 0.0,
                      agreed=sum(a for _, a, _ in rows) / n if n else 0.0,
                      semantic=sum(sem) / len(sem) if sem else None)


def evaluate(pairs: Sequence[DistillPair], answer: Answerer, terms: Distill, *, adapter: str = "",
             embed: Embed | None = None, groups: dict[str, str] | None = None, system: str = "",
             samples: int = 5) -> Evaluation:
    """Answer every held-out prompt with the student and score it against the teacher.

    ``groups`` maps pair_id → group name (pairs not named are in no group but still in overall)."""
    rows: list[tuple[bool, bool, float | None]] = []
    by_group: dict[str, list[tuple[bool, bool, float | None]]] = {}
    shown: list[tuple[str, str, str]] = []
    for p in pairs:
        messages = to_chat_record(p, system=system)["messages"][:-1]
        got = answer(messages)
        a = agree(got, p.teacher_text, measure=terms.agreement, threshold=terms.semantic_threshold, embed=embed)
        row = (a.exact, a.agreed, a.semantic)
        rows.append(row)
        if groups and p.pair_id in groups:
            by_group.setdefault(groups[p.pair_id], []).append(row)
        if len(shown) < samples:
            shown.append((p.prompt[:200], p.teacher_text[:200], got[:200]))
    return Evaluation(student=terms.student, adapter=adapter, measure=terms.agreement,
                      threshold=terms.semantic_threshold, overall=_score(rows),
                      groups={g: _score(r) for g, r in sorted(by_group.items())}, samples=shown)
