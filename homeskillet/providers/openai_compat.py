"""The OpenAI-compatible chat API a rented box serves (vLLM's ``/v1/chat/completions``): build the
request from an ``InferRequest``, parse the answer or the server-sent events, and tell a dead box
(``EndpointDown``) apart from a request the server refused.

Pure functions first (tested on recorded payloads), then two thin async calls. The box is not the
provider's control plane: no provider credential is ever sent to it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from ..errors import ProviderError
from ..sims.base import count_tokens
from .base import InferRequest, InferResult

__all__ = ["EndpointDown", "chat_body", "complete", "parse_completion", "parse_event", "stream_chat"]

DONE = object()  # what ``parse_event`` returns for ``data: [DONE]``


class EndpointDown(Exception):
    """The box did not answer: connection refused or reset, a gateway error, or a stream that
    stopped before ``[DONE]``. The connector asks the provider why (preempted? gone?)."""

    def __init__(self, detail: str, *, partial: str = "") -> None:
        super().__init__(detail)
        self.detail, self.partial = detail, partial


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(msgspec.Struct):
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_completion = msgspec.json.Decoder(_Completion)


def chat_body(req: InferRequest, *, stream: bool = False) -> dict[str, Any]:
    messages = [{"role": m.role, "content": m.content} for m in req.context]
    messages.append({"role": "user", "content": req.prompt})
    return {"model": req.model, "messages": messages, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "stream": stream}


def parse_completion(raw: bytes, req: InferRequest, latency_ms: float) -> InferResult:
    """A ``chat.completion`` body as our result; token counts estimated when ``usage`` is absent."""
    try:
        out = _decode_completion.decode(raw)
    except msgspec.DecodeError as exc:
        raise EndpointDown(f"unreadable answer from the box: {exc}") from None
    text = "".join((c.message.content or "") for c in out.choices[:1] if c.message is not None)
    usage = out.usage or _Usage(prompt_tokens=count_tokens(req.prompt), completion_tokens=count_tokens(text))
    return InferResult(text=text, model=out.model or req.model, prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens, latency_ms=latency_ms)


def parse_event(line: str) -> str | object | None:
    """One SSE line: the text it carries, ``DONE`` for the end marker, ``None`` for anything else."""
    if not line.startswith("data:"):
        return None  # blank separators, ": keep-alive" comments, event:/id: fields
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    try:
        out = _decode_completion.decode(data)
    except msgspec.DecodeError:
        return None
    return "".join((c.delta.content or "") for c in out.choices[:1] if c.delta is not None) or None


def _check(resp: httpx.Response, provider: str) -> None:
    if resp.status_code in (502, 503, 504):  # the provider's proxy or the port: nothing behind it
        raise EndpointDown(f"the box answered HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise ProviderError(f"the model server refused the request (HTTP {resp.status_code}): "
                            f"{resp.text[:300]}", provider=provider, http_status=resp.status_code)


async def complete(client: httpx.AsyncClient, endpoint: str, req: InferRequest, *, provider: str,
                   timeout: float) -> InferResult:
    t0 = time.perf_counter()
    try:
        resp = await client.post(f"{endpoint}/v1/chat/completions", json=chat_body(req), timeout=timeout)
    except httpx.ConnectTimeout:  # a box that vanished often just stops answering SYNs
        raise EndpointDown("connecting to the box timed out") from None
    except httpx.TimeoutException:
        raise ProviderError(f"the model server did not answer within {timeout:g}s", provider=provider) from None
    except httpx.TransportError as exc:
        raise EndpointDown(f"connection to the box failed: {type(exc).__name__}") from None
    _check(resp, provider)
    return parse_completion(resp.content, req, (time.perf_counter() - t0) * 1000.0)


async def stream_chat(client: httpx.AsyncClient, endpoint: str, req: InferRequest, *, provider: str,
                      timeout: float) -> AsyncIterator[str]:
    """Text pieces as the box produces them; ``EndpointDown`` if the stream ends before ``[DONE]``."""
    sent: list[str] = []
    try:
        async with client.stream("POST", f"{endpoint}/v1/chat/completions", json=chat_body(req, stream=True),
                                 timeout=timeout) as resp:
            if resp.status_code >= 400:
                await resp.aread()
            _check(resp, provider)
            async for line in resp.aiter_lines():
                piece = parse_event(line)
                if piece is DONE:
                    return
                if isinstance(piece, str):
                    sent.append(piece)
                    yield piece
    except httpx.ConnectTimeout:
        raise EndpointDown("connecting to the box timed out") from None
    except httpx.TimeoutException:
        raise ProviderError(f"the model server stalled for {timeout:g}s", provider=provider) from None
    except httpx.TransportError as exc:
        raise EndpointDown(f"the stream broke: {type(exc).__name__}", partial="".join(sent)) from None
    raise EndpointDown("the stream ended before [DONE]", partial="".join(sent))
