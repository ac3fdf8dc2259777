"""Does the student's answer agree with the teacher's? One measure for training, evaluation and canary.

Short-form answers (a label, a number, a name) agree when they are equal after normalisation;
free-form answers agree when their MiniLM embeddings are close enough (the covenant's
``semantic_threshold``). Both scores are always reported, so a reader can see how the bar was set.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

__all__ = ["Agreement", "Embed", "agree", "normalise"]

# An embedder: texts → unit-length rows (homeskillet.embeddings.MiniLMEmbedder is one).
Embed = Callable[[Sequence[str]], np.ndarray]

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_LEAD = re.compile(r"^(the answer is|answer|label|category)\s*[:\-]?\s*")


def normalise(text: str) -> str:
    """Lower case, accents folded, punctuation and articles dropped, spaces collapsed.

    Linear in the text (no backtracking patterns): it runs on every shadowed answer."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().strip()
    t = _LEAD.sub("", t)
    t = _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()
    words = [w for w in t.split(" ") if w not in ("a", "an", "the")]
    return " ".join(words)


class Agreement(msgspec.Struct, frozen=True, kw_only=True):
    exact: bool  # equal after normalise()
    semantic: float | None  # cosine of the two embeddings; None without an embedder
    agreed: bool  # by the covenant's measure

    @property
    def score(self) -> float:
        """0..1: the semantic score when there is one, else 1/0 from the exact match."""
        return self.semantic if self.semantic is not None else float(self.exact)


def agree(student: str, teacher: str, *, measure: str = "exact", threshold: float = 0.8,
          embed: Embed | None = None) -> Agreement:
    """Score one pair. ``measure`` is the covenant's ``distill.agreement``: exact or semantic."""
    exact = normalise(student) == normalise(teacher)
    semantic: float | None = None
    if embed is not None and (measure == "semantic" or not exact):
        vecs = embed([student, teacher])
        semantic = float(np.clip(vecs[0] @ vecs[1], -1.0, 1.0))
    if measure == "semantic":
        if semantic is None:
            raise ValueError("semantic agreement needs an embedder (install the 'embed' extra)")
        return Agreement(exact=exact, semantic=semantic, agreed=exact or semantic >= threshold)
    return Agreement(exact=exact, semantic=semantic, agreed=exact)
