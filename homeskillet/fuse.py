"""Fusion: fragment results become one answer, by a strategy named in the covenant.

A strategy is a pure callable over the fragments and their texts, in fragment order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import CovenantError
from .wire import Fragment

__all__ = ["STRATEGIES", "fuse", "ordered_merge"]

Strategy = Callable[[Sequence[Fragment], Sequence[str]], str]


def ordered_merge(fragments: Sequence[Fragment], texts: Sequence[str]) -> str:
    """One fragment: its text. Several: each answer under its question, in the asked order."""
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"{i + 1}. {f.prompt}\n{t}" for i, (f, t) in enumerate(zip(fragments, texts, strict=True)))


STRATEGIES: dict[str, Strategy] = {"ordered": ordered_merge}


def fuse(strategy: str, fragments: Sequence[Fragment], texts: Sequence[str]) -> str:
    try:
        fn = STRATEGIES[strategy]
    except KeyError:
        raise CovenantError(f"unknown fusion strategy {strategy!r}; known: {', '.join(STRATEGIES)}",
                            term="fusion") from None
    return fn(fragments, texts)
