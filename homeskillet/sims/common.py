"""Pieces several simulators share: a simulated clock, the OpenAI chat request a rented
instance's server accepts, and a msgspec JSON response."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec
from starlette.responses import Response

__all__ = ["DEFAULT_EPOCH", "JSON", "ChatMessage", "ChatRequest", "Clock", "SimClock", "as_clock"]

DEFAULT_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a frozen clock starts here so runs repeat


class Clock(Protocol):
    def now(self) -> float: ...


class _CallClock:
    """Adapts a plain ``() -> float`` (as other simulators take) to ``Clock``."""

    def __init__(self, fn: Callable[[], float]) -> None:
        self.now = fn


class SimClock:
    """Simulated epoch seconds: frozen at time_scale 0 (move it with ``advance``), else wall time / scale."""

    def __init__(self, time_scale: float, epoch: float | None = None) -> None:
        self.time_scale = time_scale
        self._epoch = epoch if epoch is not None else (DEFAULT_EPOCH if time_scale <= 0 else time.time())
        self._real0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        real = (time.monotonic() - self._real0) / self.time_scale if self.time_scale > 0 else 0.0
        return self._epoch + real + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds


def as_clock(clock: Clock | Callable[[], float]) -> Clock:
    """A clock object from either a clock or a plain function returning epoch seconds."""
    return clock if hasattr(clock, "now") else _CallClock(clock)


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[Any] | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[ChatMessage]
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class JSON(Response):
    """msgspec encoding: fast, and a non-finite float becomes null instead of a 500."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)
