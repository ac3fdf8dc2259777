"""A provider-neutral OpenAI-compatible chat server, as vLLM answers it on a rented machine.

Used by the io.net simulator (a CaaS container) and the TPU simulator (a server on a TPU VM).
Provider-neutral on purpose: it belongs next to ``sims/base.py`` and lives here only because this
package is where it was first needed. Text is ``sim_completion`` (deterministic per model and
prompt); latency is ``SimRandom.latency_ms``, slept scaled by ``time_scale`` and always reported
in the ``x-sim-latency-ms`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

import msgspec
from starlette.responses import Response, StreamingResponse

from homeskillet.sims.base import SimRandom, count_tokens, sim_completion
from homeskillet.sims.ionet.envelope import json_response

__all__ = ["ChatMessage", "ChatRequest", "Completion", "decode_chat", "fit_tokens", "openai_error", "respond"]


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[Any] | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """OpenAI chat completion body; unknown fields (top_p, stop, user…) are accepted, as vLLM does."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False

    def prompt(self) -> str:
        parts: list[str] = []
        for m in self.messages:
            if isinstance(m.content, str):
                parts.append(m.content)
            elif isinstance(m.content, list):
                parts.extend(str(p.get("text", "")) for p in m.content if isinstance(p, dict))
        return "\n".join(parts)


def fit_tokens(text: str, max_tokens: int) -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens: a server never sends more than it was allowed."""
    words = text.split(" ")
    while len(words) > 1 and count_tokens(" ".join(words)) > max_tokens:
        words.pop()
    text = " ".join(words)
    return text if count_tokens(text) <= max_tokens else text[: 4 * max_tokens]


def openai_error(status: int, message: str, type_: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": {"message": message, "type": type_, "param": None, "code": status}},
                         status, headers)


def decode_chat(raw: bytes) -> ChatRequest | Response:
    """The request, or the 400 an OpenAI-compatible server sends for a bad body."""
    try:
        return msgspec.json.decode(raw, type=ChatRequest)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        return openai_error(400, f"Invalid request: {exc}", "BadRequestError")


class Completion(msgspec.Struct, kw_only=True):
    """One answer, decided up front so a seed fixes text, usage and latency before any sleeping."""

    id: str
    created: int
    model: str
    text: str
    usage: dict[str, int]
    finish_reason: str
    latency_ms: float

    @classmethod
    def make(cls, rng: SimRandom, request: ChatRequest, *, id: str, created: int) -> Completion:
        max_tokens = request.max_completion_tokens or request.max_tokens or 256
        prompt = request.prompt()
        text = fit_tokens(sim_completion(request.model, prompt, max_tokens), max_tokens)
        prompt_tokens, completion_tokens = count_tokens(prompt), count_tokens(text)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return cls(id=id, created=created, model=request.model, text=text, usage=usage,
                   finish_reason="length" if completion_tokens >= max_tokens else "stop",
                   latency_ms=rng.latency_ms(completion_tokens, request.model))

    def chunk(self, delta: dict[str, str], finish: str | None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + msgspec.json.encode(body) + b"\n\n"


async def respond(rng: SimRandom, done: Completion, *, stream: bool, cut_at: float | None = None,
                  cut_message: str = "") -> Response:
    """Serve ``done``; with ``cut_at`` (0..1) the server dies that far through (e.g. preemption).

    A cut non-streaming request answers 502 after the partial wait; a cut stream sends the words
    produced so far, then an error event and no ``[DONE]``.
    """
    headers = {"x-sim-latency-ms": f"{done.latency_ms:.3f}"}
    if stream:
        return StreamingResponse(_stream(rng, done, cut_at, cut_message), media_type="text/event-stream",
                                 headers=headers)
    if cut_at is not None:
        await rng.sleep_ms(done.latency_ms * cut_at)
        return openai_error(502, cut_message, "BadGateway", headers)
    await rng.sleep_ms(done.latency_ms)
    choice = {"index": 0, "message": {"role": "assistant", "content": done.text},
              "finish_reason": done.finish_reason}
    return json_response({"id": done.id, "object": "chat.completion", "created": done.created,
                          "model": done.model, "choices": [choice], "usage": done.usage}, headers=headers)


async def _stream(rng: SimRandom, done: Completion, cut_at: float | None,
                  cut_message: str) -> AsyncIterator[bytes]:
    words = done.text.split(" ")
    stop = len(words) if cut_at is None else int(len(words) * cut_at)
    for i, word in enumerate(words[:stop]):
        await rng.sleep_ms(done.latency_ms / len(words))
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        yield done.chunk(delta, done.finish_reason if i == len(words) - 1 else None)
    if cut_at is not None:
        error = {"error": {"message": cut_message, "type": "BadGateway", "param": None, "code": 502}}
        yield b"data: " + msgspec.json.encode(error) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"
