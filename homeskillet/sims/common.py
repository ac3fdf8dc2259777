"""Pieces several simulators share: a simulated clock, the OpenAI chat request a rented
instance's server accepts (JSON or, with ``stream: true``, server-sent events as vLLM sends them),
and a msgspec JSON response."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

import msgspec
from starlette.responses import Response, StreamingResponse

from homeskillet.sims.base import SimRandom, count_tokens, sim_completion

__all__ = ["DEFAULT_EPOCH", "JSON", "ChatMessage", "ChatRequest", "Clock", "SimClock", "as_clock", "bounded_completion",
           "chat_stream"]

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
    stream: bool = False


class JSON(Response):
    """msgspec encoding: fast, and a non-finite float becomes null instead of a 500."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def bounded_completion(model: str, prompt: str, max_tokens: int) -> str:
    """``sim_completion`` cut to ``max_tokens`` as counted by ``count_tokens``: a server never
    returns more tokens than asked for, however long the model name it echoes."""
    words = sim_completion(model, prompt, max_tokens).split(" ")
    while len(words) > 1 and count_tokens(" ".join(words)) > max_tokens:
        words.pop()
    text = " ".join(words)
    return text if count_tokens(text) <= max_tokens else text[: max(1, max_tokens * 4 - 3)]


def chat_stream(rnd: SimRandom, *, completion_id: str, created: int, model: str, text: str, latency_ms: float,
                cut: Callable[[], None] | None = None) -> StreamingResponse:
    """``text`` as vLLM streams it: one ``chat.completion.chunk`` per word, then ``data: [DONE]``.

    With ``cut`` the box dies halfway: ``cut()`` runs (the simulator stops the instance) and the
    body ends there, with no finish_reason and no ``[DONE]``, as a client sees a dropped upstream.
    """
    words = text.split(" ")
    stop = len(words) if cut is None else max(1, len(words) // 2)

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + msgspec.json.encode(body) + b"\n\n"

    async def body() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        for i, word in enumerate(words[:stop]):
            await rnd.sleep_ms(latency_ms / len(words))
            yield chunk({"content": word if i == 0 else " " + word}, None)
        if cut is not None:
            cut()
            return
        yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"x-sim-latency-ms": f"{latency_ms:.3f}"})
