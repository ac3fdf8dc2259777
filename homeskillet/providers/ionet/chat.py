"""Inference on a rented machine's OpenAI-compatible server (vLLM, JetStream), as io.net
containers and TPU VMs run it: the pure half (request body, response parsing) and a thin send.

Provider-neutral: the io.net and TPU connectors both use it (a candidate for ``providers/`` once
other rented-instance connectors need it). Errors come back as our error tree; the calling
connector may turn a failure into ``Preempted`` after it has looked at the allocation.
No credential is ever sent here: the instance's server is not the provider's API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import SSEError, aconnect_sse

from ...errors import HomeskilletError, ProviderError
from ...sims.base import count_tokens
from ...telemetry import get_logger
from ..base import Allocation, InferRequest, InferResult, StandingAllocation
from ..http import raise_for_status, retry_after

__all__ = ["BoxStats", "ChatCompletion", "ChatOnBox", "chat_body", "complete", "parse_completion", "stream_text",
           "timeout_for"]


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletion(msgspec.Struct):
    choices: list[_Choice] = []
    model: str = ""
    usage: _Usage | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = []
    error: _ErrorBody | None = None  # vLLM sends an error event mid-stream when the engine dies


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None
    detail: Any = None


_completion = msgspec.json.Decoder(ChatCompletion)
_chunk = msgspec.json.Decoder(_Chunk)
_envelope = msgspec.json.Decoder(_ErrorEnvelope)


log = get_logger("homeskillet.providers.box")


def chat_body(req: InferRequest, model_id: str, *, stream: bool) -> dict[str, Any]:
    """The chat request for ``req``; ``model_id`` is the name the server was started with."""
    messages = [{"role": m.role, "content": m.content} for m in req.context]
    messages.append({"role": "user", "content": req.prompt})
    return {"model": model_id, "messages": messages, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "stream": stream}


def parse_completion(raw: bytes, provider: str) -> ChatCompletion:
    try:
        return _completion.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"the instance's server sent an unreadable completion: {exc}",
                            provider=provider) from None


def error_message(raw: bytes) -> str:
    """The message of an OpenAI (``{"error": {"message"}}``) or FastAPI (``{"detail"}``) error body."""
    try:
        env = _envelope.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "no body"
    if env.error is not None and env.error.message:
        return env.error.message
    return str(env.detail) if env.detail is not None else "no message"


def timeout_for(req: InferRequest, limit_s: float) -> float:
    """``limit_s``, shortened to what is left before the strike's absolute deadline."""
    if req.deadline_ms > 0:
        return max(0.001, min(limit_s, req.deadline_ms / 1000.0 - time.time()))
    return limit_s


def _raise(provider: str, resp: httpx.Response, raw: bytes) -> None:
    raise_for_status(provider, resp.status_code, error_message(raw), retry_after_s=retry_after(resp))


def _transport_error(provider: str, exc: httpx.TransportError, timeout: float) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"the instance did not answer within {timeout:g}s", provider=provider)
    return ProviderError(f"cannot reach the instance's server: {type(exc).__name__}", provider=provider)


async def complete(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, provider: str,
                   timeout: float) -> ChatCompletion:
    """POST ``{url}/v1/chat/completions`` and parse the answer; usage filled in when absent."""
    try:
        resp = await client.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, timeout=timeout)
    except httpx.TransportError as exc:
        raise _transport_error(provider, exc, timeout) from None
    if resp.status_code != 200:
        _raise(provider, resp, resp.content)
    done = parse_completion(resp.content, provider)
    if done.usage is None:  # some servers leave usage out; estimate rather than bill nothing
        prompt = " ".join(str(m["content"]) for m in body["messages"])
        done.usage = _Usage(count_tokens(prompt), count_tokens(done.text))
    return done


async def stream_text(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, provider: str,
                      timeout: float) -> AsyncIterator[str]:
    """Text pieces from a streamed completion; an error event or a cut stream raises."""
    try:
        async with aconnect_sse(client, "POST", f"{url.rstrip('/')}/v1/chat/completions", json=body,
                                timeout=timeout) as source:
            resp = source.response
            if resp.status_code != 200:
                _raise(provider, resp, await resp.aread())
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    return
                try:
                    chunk = _chunk.decode(event.data)
                except msgspec.DecodeError:
                    raise ProviderError("the instance's server sent an unreadable stream event",
                                        provider=provider) from None
                if chunk.error is not None:
                    raise ProviderError(f"the stream failed: {chunk.error.message}", provider=provider)
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
    except httpx.TransportError as exc:
        raise _transport_error(provider, exc, timeout) from None
    except SSEError as exc:
        raise ProviderError(f"the instance's server did not stream: {exc}", provider=provider) from None
    raise ProviderError("the stream ended without [DONE]: the server went away mid-answer", provider=provider)


class BoxStats:
    """Inferences served on one allocation and their summed latency (for its metrics)."""

    __slots__ = ("count", "latency_ms")

    def __init__(self) -> None:
        self.count, self.latency_ms = 0, 0.0


class ChatOnBox:
    """``infer`` and ``stream`` on a rented machine's OpenAI-compatible server, for a connector
    that supplies the allocation (``_allocation``), the failure diagnosis (``_failed``) and the
    model id; shared by the io.net and TPU connectors."""

    provider: str
    _client: httpx.AsyncClient
    _active: int
    _stats: dict[str, BoxStats]
    _standing: dict[str, StandingAllocation]

    async def _release_standing(self) -> None:
        """Release every standing allocation; a refusal is logged, not raised, so shutdown goes on."""
        for standing in list(self._standing.values()):
            try:
                await standing.close()
            except HomeskilletError as exc:
                log.warning(f"{self.provider}_close_release_failed", error=exc.message)
        self._standing.clear()

    async def _allocation(self, req: InferRequest) -> tuple[Allocation, StandingAllocation | None]:
        raise NotImplementedError

    async def _failed(self, exc: ProviderError, alloc: Allocation, standing: StandingAllocation | None,
                      t0: float) -> Exception:
        raise NotImplementedError

    def _model_id(self, model: str) -> str:
        raise NotImplementedError

    def _infer_timeout_s(self) -> float:
        raise NotImplementedError

    async def infer(self, req: InferRequest) -> InferResult:
        alloc, standing = await self._allocation(req)
        body = chat_body(req, str(alloc.detail.get("model_id") or self._model_id(req.model)), stream=False)
        self._active += 1
        t0 = time.perf_counter()
        try:
            done = await complete(self._client, alloc.endpoint, body, provider=self.provider,
                                  timeout=timeout_for(req, self._infer_timeout_s()))
        except ProviderError as exc:
            raise await self._failed(exc, alloc, standing, t0) from None
        finally:
            self._active -= 1
        latency = (time.perf_counter() - t0) * 1000.0
        stats = self._stats.setdefault(alloc.allocation_id, BoxStats())
        stats.count, stats.latency_ms = stats.count + 1, stats.latency_ms + latency
        usage = done.usage
        assert usage is not None
        return InferResult(text=done.text, model=req.model, prompt_tokens=usage.prompt_tokens,
                           completion_tokens=usage.completion_tokens, latency_ms=latency)

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        alloc, standing = await self._allocation(req)
        body = chat_body(req, str(alloc.detail.get("model_id") or self._model_id(req.model)), stream=True)
        self._active += 1
        t0 = time.perf_counter()
        try:
            async for piece in stream_text(self._client, alloc.endpoint, body, provider=self.provider,
                                           timeout=timeout_for(req, self._infer_timeout_s())):
                yield piece
        except ProviderError as exc:
            raise await self._failed(exc, alloc, standing, t0) from None
        finally:
            self._active -= 1
