"""Wall-clock time in epoch milliseconds: what quotes, leases and deadlines carry on the wire."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)
