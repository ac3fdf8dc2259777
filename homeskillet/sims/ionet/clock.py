"""Simulated time for the io.net simulator.

Deployments start, run and expire by this clock, never by ``time.sleep``: tests advance a
``ManualClock``; scenario replay with ``time_scale > 0`` uses a ``ScaledClock`` so a prepaid hour
passes in ``3600 * time_scale`` real seconds. (Kept local because ``sims/base.py`` has no clock.)
"""

from __future__ import annotations

import time
from typing import Protocol

from homeskillet.sims.base import SimConfig

__all__ = ["EPOCH", "Clock", "ManualClock", "ScaledClock", "clock_for"]

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed start so seeded runs print the same timestamps


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, in simulated time."""
        ...


class ManualClock:
    """Time moves only when told: ``advance(3600)`` is an hour, instantly."""

    def __init__(self, start: float = EPOCH) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        return self._now


class ScaledClock:
    """Wall time sped up by ``1 / time_scale`` (0.1 = ten times faster)."""

    def __init__(self, time_scale: float, start: float | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("ScaledClock needs time_scale > 0; use ManualClock for 0")
        self._scale = time_scale
        self._start = time.time() if start is None else start
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._t0) / self._scale


def clock_for(config: SimConfig) -> Clock:
    """``time_scale`` 0 means nothing waits in real time, so time moves only by ``advance``."""
    return ManualClock() if config.time_scale == 0 else ScaledClock(config.time_scale)
