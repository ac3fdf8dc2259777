"""Outcome columns of a virtual-time run: per-query results, ``judge`` over columns, and the
pool agent's latency EWMA over a batch of verdicts."""

from __future__ import annotations

import numpy as np

__all__ = ["EWMA_ALPHA", "Queries", "ewma", "judge_many"]

EWMA_ALPHA = 0.2  # pools.TrackRecord's smoothing


def judge_many(cost: np.ndarray, elapsed_ms: np.ndarray, ceiling: np.ndarray, target_ms: np.ndarray,
               hard_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``orchestrator.judge`` over columns: (cost ceiling, latency target, hard deadline) broken.
    A test holds it to ``judge`` on random strikes."""
    return cost > ceiling, elapsed_ms > target_ms, elapsed_ms > hard_ms


class Queries:
    """Per-query outcome columns, grown as queries arrive."""

    def __init__(self, expect: int) -> None:
        n = max(1024, expect)
        self.n = 0
        self.t = np.zeros(n)
        self.cls = np.zeros(n, dtype=np.int16)
        self.lat = np.zeros(n, dtype=np.float32)  # ms, the slowest fragment so far
        self.cost = np.zeros(n)
        self.left = np.zeros(n, dtype=np.int16)  # fragments not finished
        self.err = np.zeros(n, dtype=np.int8)  # index into ERROR_KINDS; 0 = none
        self.fb = np.zeros(n, dtype=bool)

    def add(self, t: np.ndarray, cls: np.ndarray, frags: np.ndarray) -> np.ndarray:
        k = len(t)
        while self.n + k > len(self.t):
            for name in ("t", "cls", "lat", "cost", "left", "err", "fb"):
                old = getattr(self, name)
                new = np.zeros(2 * len(old), dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        idx = np.arange(self.n, self.n + k)
        self.t[idx], self.cls[idx], self.left[idx] = t, cls, frags
        self.n += k
        return idx


def ewma(prev: float | None, values: np.ndarray) -> float:
    """``TrackRecord.add``'s EWMA after ``values`` in order, in one step: each older value's weight
    shrinks by (1 - alpha) per newer one. A test holds it to the one-at-a-time update."""
    a = EWMA_ALPHA
    w = a * (1 - a) ** np.arange(len(values) - 1, -1, -1, dtype=np.float64)
    start = prev if prev is not None else float(values[0])
    return float(np.dot(w, values) + (1 - a) ** len(values) * start)
