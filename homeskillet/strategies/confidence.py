"""Confidence: how much a strike's own evidence says its answer can be kept. Always 0..1.

Two sources, in this order:

1. **Token log-probabilities**, when the provider returns them: confidence = exp(mean token
   logprob), the geometric mean of the probabilities the model gave its own tokens. A model
   that hesitates spreads probability and scores low. It is the model's own belief, so it is
   only as calibrated as the model; a covenant's threshold is set against measured agreement.
2. **Self-consistency**, when it does not: the same fragment sampled ``n`` times (temperature
   raised to at least ``SAMPLE_TEMPERATURE``); confidence = the share of samples that gave the
   modal answer. Stable answers are kept; answers that change between samples are not.

No evidence (no logprobs, one sample) is confidence ``None``: a cascade does not keep an answer
it has no evidence for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from ..fuse import normalise

__all__ = ["SAMPLE_TEMPERATURE", "agreement", "from_logprob"]

SAMPLE_TEMPERATURE = 0.7


def from_logprob(mean_logprob: float | None) -> float | None:
    if mean_logprob is None or math.isnan(mean_logprob):
        return None
    return min(1.0, max(0.0, math.exp(min(0.0, mean_logprob))))


def agreement(texts: Sequence[str]) -> tuple[int, float]:
    """(index of a text giving the modal answer, share of texts that agree with it)."""
    if not texts:
        raise ValueError("agreement of no answers")
    keys = [normalise(t) for t in texts]
    modal, count = Counter(keys).most_common(1)[0]
    return keys.index(modal), count / len(texts)
