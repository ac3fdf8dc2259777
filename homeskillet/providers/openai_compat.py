"""The OpenAI-compatible chat API a rented box serves (vLLM's ``/v1/chat/completions``, JetStream on
a TPU VM): build the request from an ``InferRequest``, parse the answer or the server-sent events,
and tell a dead box (``EndpointDown``) apart from a request the server refused.

Every rented-box connector reaches its box through this module (Vast.ai and RunPod through
``rented.RentedConnector``, io.net and TPU through ``ionet.chat.ChatOnBox``). Pure functions first
(tested on recorded payloads), then two thin async calls. The box is not the provider's control
plane: no provider credential is ever sent to it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from ..errors import ProviderError, RateLimited
from ..sims.base import count_tokens
from .base import InferRequest, InferResult
from .http import retry_after

__all__ = ["EndpointDown", "chat_body", "complete", "error_message", "parse_completion", "parse_event", "stream_chat",
           "timeout_for"]

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


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Completion(msgspec.Struct):
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorBody | None = None  # vLLM sends an error event mid-stream when the engine dies


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None
    detail: Any = None


_decode_completion = msgspec.json.Decoder(_Completion)
_decode_envelope = msgspec.json.Decoder(_ErrorEnvelope)


def chat_body(req: InferRequest, *, model: str | None = None, stream: bool = False) -> dict[str, Any]:
    """The chat request; ``model`` is the name the box's server was started with (default: ours)."""
    messages = [{"role": m.role, "content": m.content} for m in req.context]
    messages.append({"role": "user", "content": req.prompt})
    return {"model": model or req.model, "messages": messages, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "stream": stream}


def timeout_for(req: InferRequest, limit_s: float) -> float:
    """``limit_s``, shortened to what is left before the strike's absolute deadline."""
    if req.deadline_ms > 0:
        return max(0.05, min(limit_s, req.deadline_ms / 1000.0 - time.time()))
    return limit_s


def error_message(raw: bytes) -> str:
    """The message of an OpenAI (``{"error": {"message"}}``) or FastAPI (``{"detail"}``) error body."""
    try:
        env = _decode_envelope.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "no body"
    if env.error is not None and env.error.message:
        return env.error.message
    return str(env.detail) if env.detail is not None else "no message"


def parse_completion(raw: bytes, req: InferRequest, latency_ms: float) -> InferResult:
    """A ``chat.completion`` body as our result (named by our model, whatever the box calls it);
    token counts estimated when ``usage`` is absent."""
    try:
        out = _decode_completion.decode(raw)
    except msgspec.DecodeError as exc:
        raise EndpointDown(f"unreadable answer from the box: {exc}") from None
    text = "".join((c.message.content or "") for c in out.choices[:1] if c.message is not None)
    usage = out.usage or _Usage(prompt_tokens=count_tokens(req.prompt), completion_tokens=count_tokens(text))
    return InferResult(text=text, model=req.model, prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens, latency_ms=latency_ms)


def parse_event(line: str) -> str | object | None:
    """One SSE line: the text it carries, ``DONE`` for the end marker, ``None`` for anything else;
    an error event (the engine died mid-answer) raises ``EndpointDown``."""
    if not line.startswith("data:"):
        return None  # blank separators, ": keep-alive" comments, event:/id: fields
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    try:
        out = _decode_completion.decode(data)
    except msgspec.DecodeError:
        return None
    if out.error is not None:
        raise EndpointDown(f"the stream failed: {out.error.message or 'an error event'}")
    return "".join((c.delta.content or "") for c in out.choices[:1] if c.delta is not None) or None


def _check(resp: httpx.Response, provider: str) -> None:
    if resp.status_code in (502, 503, 504):  # the provider's proxy or the port: nothing behind it
        raise EndpointDown(f"the box answered HTTP {resp.status_code}")
    if resp.status_code == 429:
        raise RateLimited(f"the model server is overloaded: {error_message(resp.content)}", provider=provider,
                          retry_after_s=retry_after(resp))
    if resp.status_code >= 400:
        raise ProviderError(f"the model server refused the request (HTTP {resp.status_code}): "
                            f"{error_message(resp.content)}", provider=provider, http_status=resp.status_code)


async def complete(client: httpx.AsyncClient, endpoint: str, req: InferRequest, *, provider: str,
                   timeout: float, model: str | None = None) -> InferResult:
    t0 = time.perf_counter()
    try:
        resp = await client.post(f"{endpoint.rstrip('/')}/v1/chat/completions", json=chat_body(req, model=model),
                                 timeout=timeout)
    except httpx.ConnectTimeout:  # a box that vanished often just stops answering SYNs
        raise EndpointDown("connecting to the box timed out") from None
    except httpx.TimeoutException:
        raise ProviderError(f"the model server did not answer within {timeout:g}s", provider=provider) from None
    except httpx.TransportError as exc:
        raise EndpointDown(f"connection to the box failed: {type(exc).__name__}") from None
    _check(resp, provider)
    return parse_completion(resp.content, req, (time.perf_counter() - t0) * 1000.0)


async def stream_chat(client: httpx.AsyncClient, endpoint: str, req: InferRequest, *, provider: str,
                      timeout: float, model: str | None = None) -> AsyncIterator[str]:
    """Text pieces as the box produces them; ``EndpointDown`` if the stream ends before ``[DONE]``."""
    sent: list[str] = []
    try:
        async with client.stream("POST", f"{endpoint.rstrip('/')}/v1/chat/completions",
                                 json=chat_body(req, model=model, stream=True), timeout=timeout) as resp:
            if resp.status_code >= 400:
                await resp.aread()
            _check(resp, provider)
            async for line in resp.aiter_lines():
                try:
                    piece = parse_event(line)
                except EndpointDown as down:
                    raise EndpointDown(down.detail, partial="".join(sent)) from None
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
