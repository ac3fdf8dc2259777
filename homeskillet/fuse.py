"""Fusion: results become one answer, by a named strategy. Every strategy is a pure callable over
``Piece``s and returns the text plus, for each piece, how it counted (so the Answer can say which
fragments contributed and how).

Two kinds:

- over **parts** (different questions or chunks): ``ordered`` merges them in order; ``reduce``
  has a model combine them: its pure half, ``reduce_prompt``, builds the combining fragment, the
  strike is the serving layer's job;
- over **alternatives** (the same fragment from several pools): ``vote`` (majority of
  normalised answers), ``confidence`` (confidence-weighted best-of), ``teacher`` (the teacher
  pool's answer overrides the students').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from .errors import CovenantError
from .sims.base import count_tokens
from .wire import Fragment

__all__ = [
    "ALTERNATIVES",
    "PARTS",
    "STRATEGIES",
    "Fused",
    "Piece",
    "confidence_best",
    "fuse",
    "fuse_pieces",
    "majority_vote",
    "normalise",
    "ordered_merge",
    "reduce_groups",
    "reduce_prompt",
    "teacher_override",
]

NEUTRAL = 0.5  # the weight of an answer that came with no confidence evidence


class Piece(msgspec.Struct, kw_only=True, frozen=True):
    """One result as fusion sees it."""

    fragment_id: str
    prompt: str
    text: str
    confidence: float | None = None
    source: str = ""  # the pool or member step it came from
    teacher: bool = False


class Fused(msgspec.Struct, kw_only=True):
    text: str
    used: list[bool]  # per piece: is its text (or an identical one) in the answer
    notes: list[str]  # per piece: how it counted, in a few words


Strategy = Callable[[Sequence[Piece]], Fused]


def normalise(text: str) -> str:
    """What two answers must share to count as the same answer: case, spacing and trailing
    punctuation do not matter."""
    return " ".join(text.casefold().split()).rstrip(" .!")


def ordered_merge(pieces: Sequence[Piece]) -> Fused:
    """One piece: its text. Several: each answer under its question, in the asked order."""
    if len(pieces) == 1:
        return Fused(text=pieces[0].text, used=[True], notes=["the answer"])
    text = "\n\n".join(f"{i + 1}. {p.prompt}\n{p.text}" for i, p in enumerate(pieces))
    return Fused(text=text, used=[True] * len(pieces), notes=[f"part {i + 1} of {len(pieces)} (ordered merge)"
                                                              for i in range(len(pieces))])


def _groups(pieces: Sequence[Piece]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pieces):
        groups.setdefault(normalise(p.text), []).append(i)
    return groups


def _weight(p: Piece) -> float:
    return NEUTRAL if p.confidence is None else p.confidence


def _pick(pieces: Sequence[Piece], members: list[int]) -> int:
    """The representative of a group of equal answers: the most confident, then the first."""
    return max(members, key=lambda i: (_weight(pieces[i]), -i))


def majority_vote(pieces: Sequence[Piece]) -> Fused:
    """The answer most pieces gave; a tie goes to the larger summed confidence, then to the
    answer that came first."""
    groups = _groups(pieces)
    n = len(pieces)
    win = max(groups.values(), key=lambda g: (len(g), sum(_weight(pieces[i]) for i in g), -g[0]))
    used = [i in win for i in range(n)]
    notes = [f"won the vote {len(win)}/{n}" if used[i] else f"outvoted ({len(groups[normalise(p.text)])}/{n})"
             for i, p in enumerate(pieces)]
    return Fused(text=pieces[_pick(pieces, win)].text, used=used, notes=notes)


def confidence_best(pieces: Sequence[Piece]) -> Fused:
    """Best-of by confidence: equal answers pool their confidence; the heaviest answer wins.
    A piece without confidence evidence weighs ``NEUTRAL``."""
    groups = _groups(pieces)
    weights = {k: sum(_weight(pieces[i]) for i in g) for k, g in groups.items()}
    best = max(groups, key=lambda k: (weights[k], -groups[k][0]))
    used = [normalise(p.text) == best for p in pieces]
    notes = [f"best of {len(pieces)} (weight {weights[best]:.2f})" if used[i]
             else f"weighed out ({weights[normalise(p.text)]:.2f} < {weights[best]:.2f})"
             for i, p in enumerate(pieces)]
    return Fused(text=pieces[_pick(pieces, groups[best])].text, used=used, notes=notes)


def teacher_override(pieces: Sequence[Piece]) -> Fused:
    """The teacher's answer wins whenever the teacher answered; the students' answers are kept
    in the record (agreeing or not, which is what distillation learns from). Without a teacher
    answer, the students vote."""
    teacher = next((i for i, p in enumerate(pieces) if p.teacher), None)
    if teacher is None:
        voted = majority_vote(pieces)
        return Fused(text=voted.text, used=voted.used, notes=[f"{n} (no teacher answer)" for n in voted.notes])
    key = normalise(pieces[teacher].text)
    used = [normalise(p.text) == key for p in pieces]
    notes = ["teacher override" if i == teacher else ("agreed with the teacher" if used[i] else "overridden by teacher")
             for i in range(len(pieces))]
    return Fused(text=pieces[teacher].text, used=used, notes=notes)


PARTS: dict[str, Strategy] = {"ordered": ordered_merge}  # "reduce" needs a strike: see reduce_prompt
ALTERNATIVES: dict[str, Strategy] = {"vote": majority_vote, "confidence": confidence_best,
                                     "teacher": teacher_override}
STRATEGIES: dict[str, Strategy] = {**PARTS, **ALTERNATIVES}


def fuse_pieces(strategy: str, pieces: Sequence[Piece]) -> Fused:
    if not pieces:
        raise ValueError("nothing to fuse")
    try:
        fn = STRATEGIES[strategy]
    except KeyError:
        raise CovenantError(f"unknown fusion strategy {strategy!r}; known: {', '.join(STRATEGIES)}, reduce",
                            term="fusion") from None
    return fn(pieces)


def fuse(strategy: str, fragments: Sequence[Fragment], texts: Sequence[str]) -> str:
    """Texts of fragments, fused (the first version's call, kept for callers that need only text)."""
    pieces = [Piece(fragment_id=f.fragment_id, prompt=f.prompt, text=t) for f, t in zip(fragments, texts, strict=True)]
    return fuse_pieces(strategy, pieces).text


def reduce_prompt(instruction: str, pieces: Sequence[Piece]) -> str:
    """The prompt of the fragment that combines the others: the ask, then each partial answer."""
    ask = instruction.strip() or "Combine the partial answers below into one complete answer."
    # A short prompt (a question) labels its answer; a long one (a chunk) would only repeat the text.
    body = "\n\n".join(f"[answer {i + 1}]{' ' + p.prompt.strip() if len(p.prompt) <= 160 else ''}\n{p.text}"
                       for i, p in enumerate(pieces))
    return f"{ask}\n\nCombine these {len(pieces)} partial answers into one answer:\n\n{body}"


def reduce_groups(pieces: Sequence[Piece], budget_tokens: int, instruction: str = "") -> list[list[int]]:
    """Indices of pieces grouped so each group's reduce prompt fits ``budget_tokens`` (0: one group).
    A tree reduce runs these groups, then reduces their results, until one answer is left."""
    if budget_tokens <= 0 or count_tokens(reduce_prompt(instruction, pieces)) <= budget_tokens:
        return [list(range(len(pieces)))]
    groups: list[list[int]] = [[]]
    for i in range(len(pieces)):
        trial = groups[-1] + [i]
        if groups[-1] and count_tokens(reduce_prompt(instruction, [pieces[j] for j in trial])) > budget_tokens:
            groups.append([i])
        else:
            groups[-1] = trial
    return groups
