"""How "right" a simulated engine's answers are, and how confident it says it is.

Strategies (cascade, ensemble vote, confidence best-of) react to answer quality, so every engine
that stands in for a model — the ``echo`` engine, the replay engine, the provider simulators —
draws it from one seeded model:

- ``quality``: the share of prompts answered "right" (as a quality-1 pool would answer them); the
  rest get a wrong answer. Which prompts are right is fixed per (seed, prompt), so a scenario says
  exactly which queries a cheap pool gets right;
- ``vary_wrong``: wrong answers differ from one strike to the next (so self-consistency across
  samples can notice them); right answers never vary;
- ``logprobs``: report a mean token log-probability whose confidence, exp(mean logprob), is drawn
  per (seed, prompt) from ``confidence_right`` or ``confidence_wrong`` (ranges that may overlap:
  how well confidence separates right from wrong is the scenario's choice, stated in its spec).
"""

from __future__ import annotations

import hashlib
import math
import random

import msgspec

__all__ = ["AnswerModel", "unit_draw"]


def unit_draw(*parts: object) -> float:
    """A deterministic draw in [0, 1) from the parts."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class AnswerModel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    seed: int = 0
    quality: float = 1.0
    vary_wrong: bool = False
    logprobs: bool = False
    confidence_right: tuple[float, float] = (0.6, 0.99)
    confidence_wrong: tuple[float, float] = (0.1, 0.55)

    def __post_init__(self) -> None:
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"quality={self.quality} is outside 0..1")
        for name, (lo, hi) in (("confidence_right", self.confidence_right),
                               ("confidence_wrong", self.confidence_wrong)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}={[lo, hi]} must be [lo, hi] with 0 < lo ≤ hi ≤ 1")

    def right(self, prompt: str) -> bool:
        """Whether this engine answers ``prompt`` as a quality-1 engine would."""
        return self.quality >= 1.0 or unit_draw(self.seed, "quality", prompt) < self.quality

    def answer(self, reference: str, prompt: str, rng: random.Random) -> str:
        """``reference`` (what a quality-1 engine says) when right, else a recognisably wrong answer."""
        if self.right(prompt):
            return reference
        tag = f"{rng.randrange(1 << 30):x}" if self.vary_wrong else f"{self.seed}"
        return f"{reference} [wrong {tag}]"

    def logprob_mean(self, prompt: str) -> float | None:
        """Mean token log-probability of the answer to ``prompt``, or None when not reported."""
        if not self.logprobs:
            return None
        lo, hi = self.confidence_right if self.right(prompt) else self.confidence_wrong
        return math.log(lo + (hi - lo) * unit_draw(self.seed, "confidence", prompt))
