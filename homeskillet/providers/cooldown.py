"""Honouring a provider's ``Retry-After``: after a 429 that names a wait, calls within the window
fail at once with ``RateLimited`` (the remaining wait attached) instead of hitting the provider
again, and quotes report nothing available until it has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import RateLimited

__all__ = ["Cooldown"]


class Cooldown:
    def __init__(self, provider: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider, self._clock = provider, clock
        self._until = 0.0

    def start(self, seconds: float | None) -> None:
        if seconds is not None and seconds > 0:
            self._until = max(self._until, self._clock() + seconds)

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def check(self) -> None:
        """Raise ``RateLimited`` while the provider's Retry-After window lasts."""
        left = self.remaining()
        if left > 0:
            raise RateLimited(f"waiting out the provider's Retry-After ({left:.1f}s left); no request sent",
                              provider=self.provider, retry_after_s=left)
