"""OpenAI-compatible API: ``POST /v1/chat/completions`` (plain and SSE) and ``GET /v1/models``.

Decode the OpenAI request into a ``Query``, call the gateway, encode the ``Answer`` as an OpenAI
completion (the cost, pools and verdict ride along in ``homeskillet``). ``model`` names a covenant
or a model (the covenant book resolves it); ``covenant`` and ``overrides`` may come in the body.

Streaming (``stream: true``) sends each piece of the answer as a ``chat.completion.chunk`` event
as the strikes produce it (``streaming.py``), then a last chunk with ``finish_reason`` and the
``homeskillet`` extension, the usage chunk if asked, and ``data: [DONE]``. The response starts
with the first text, so an error before it gets the status and OpenAI's error body (what the SDKs
raise on); an error after it (``stream_interrupted``) is an in-band ``{"error": …}`` event, which
the SDKs raise as ``APIError``. A client that hangs up cancels the query and its strikes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest, HomeskilletError, TenantRateLimited, header_text
from ..streaming import streamed
from ..wire import Answer, Message, Query
from .http_common import context, json, principal, read_body
from .openai_wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorEnvelope,
    HomeskilletExtension,
    Model,
    ModelList,
    Usage,
)

__all__ = ["completion_response", "openai_error", "routes", "stream_response", "to_query"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                403: "permission_error", 404: "invalid_request_error", 409: "conflict_error",
                413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def _error_body(exc: HomeskilletError) -> ErrorEnvelope:
    code = "model_not_found" if exc.code == "unknown_covenant" else exc.code
    return ErrorEnvelope(error=ErrorBody(message=exc.message, type=_ERROR_TYPES.get(exc.status, "server_error"),
                                         param=exc.term, code=code))


def openai_error(exc: HomeskilletError) -> Response:
    body = _error_body(exc)
    headers = {"retry-after": f"{max(1, round(exc.retry_after_s))}"} if isinstance(exc, TenantRateLimited) else {}
    if exc.status == 401:
        why = header_text(exc.term or "invalid", 200).replace('"', "'")
        headers["www-authenticate"] = f'Bearer error="invalid_token", error_description="{why}"'
    return json(body, exc.status, headers)


def _text(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for j, p in enumerate(m.content):
        if p.type != "text" or p.text is None:
            raise BadRequest(f"messages[{i}].content[{j}] is a {p.type!r} part; only text parts are served",
                             term=f"messages[{i}].content[{j}].type")
        parts.append(p.text)
    return "\n".join(parts)


def to_query(req: ChatCompletionRequest) -> Query:
    """The OpenAI request as our Query; options we cannot honour are a 400, not silently dropped."""
    if req.n != 1:
        raise BadRequest(f"'n' is {req.n}; only one choice (n=1) is served", term="n")
    if not req.messages:
        raise BadRequest("'messages' is empty; send at least one user message", term="messages")
    messages = [Message(role="system" if m.role == "developer" else m.role, content=_text(m, i))
                for i, m in enumerate(req.messages)]
    return Query(messages=messages, model=req.model, covenant=req.covenant, overrides=req.overrides,
                 max_tokens=req.max_completion_tokens or req.max_tokens,
                 temperature=1.0 if req.temperature is None else req.temperature,
                 tenant=req.tenant or "default")


def _extension(a: Answer) -> HomeskilletExtension:
    return HomeskilletExtension(query_id=a.query_id, tenant=a.tenant, covenant=a.covenant, covenant_id=a.covenant_id,
                                cost_usd=a.cost_usd, latency_ms=a.latency_ms, kept=all(f.kept for f in a.fragments),
                                pools=[f.pool for f in a.fragments], fragments=a.fragments, strategy=a.strategy,
                                ttft_ms=a.ttft_ms)


def _usage(a: Answer) -> Usage:
    p = sum(f.prompt_tokens for f in a.fragments)
    c = sum(f.completion_tokens for f in a.fragments)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


async def chat_completions(request: Request) -> Response:
    req = await read_body(request, ChatCompletionRequest)
    who = principal(request, req.tenant, scope="hs:query")
    gateway, query = context(request).gateway, to_query(req)
    if req.stream:
        return await stream_response(req, query, streamed(lambda sink: gateway.ask(query, who, stream=sink)))
    return completion_response(req, await gateway.ask(query, who))


async def stream_response(req: ChatCompletionRequest, query: Query, items: AsyncIterator[str | Answer]) -> Response:
    """SSE from a streamed query, started once its first text (or its answer) is there: an error
    before that raises here, so the caller gets a status and an error body."""
    try:
        first = await anext(items)
    except BaseException:
        await items.aclose()  # type: ignore[attr-defined]
        raise
    cid, created = f"chatcmpl-{query.query_id}", int(time.time())  # the gateway gave it its id
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    return StreamingResponse(_live(first, items, cid, created, req.model, include_usage),
                             media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _event(cid: str, created: int, model: str, choices: list[ChunkChoice], **extra: Any) -> bytes:
    chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


async def _live(first: str | Answer, items: AsyncIterator[str | Answer], cid: str, created: int, model: str,
                include_usage: bool) -> AsyncIterator[bytes]:
    role = _event(cid, created, model, [ChunkChoice(delta=Delta(role="assistant", content=""))])
    item = first
    try:
        while not isinstance(item, Answer):
            yield role + _event(cid, created, model, [ChunkChoice(delta=Delta(content=item))])
            role = b""  # the role chunk goes out in one write with the first text
            item = await anext(items)
    except HomeskilletError as exc:  # the headers are sent: report it in-band, as OpenAI does
        yield b"data: " + msgspec.json.encode(_error_body(exc)) + b"\n\n"
        return
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    yield role + b"".join(_ending(item, cid, created, model, include_usage))


def completion_response(req: ChatCompletionRequest, answer: Answer) -> Response:
    """The answer as an OpenAI chat completion, plain or as SSE chunks, as the request asked."""
    cid, created = f"chatcmpl-{answer.query_id}", int(time.time())
    if not req.stream:
        return json(ChatCompletion(id=cid, created=created, model=req.model, usage=_usage(answer),
                                   choices=[Choice(message=AssistantMessage(content=answer.text))],
                                   homeskillet=_extension(answer)))
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    return StreamingResponse(_chunks(answer, cid, created, req.model, include_usage),
                             media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _chunks(a: Answer, cid: str, created: int, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """An answer that is already whole (a reservation's), as one content chunk and the ending."""
    yield _event(cid, created, model, [ChunkChoice(delta=Delta(role="assistant", content=""))])
    if a.text:
        yield _event(cid, created, model, [ChunkChoice(delta=Delta(content=a.text))])
    for line in _ending(a, cid, created, model, include_usage):
        yield line


def _ending(a: Answer, cid: str, created: int, model: str, include_usage: bool) -> list[bytes]:
    lines = [_event(cid, created, model, [ChunkChoice(delta=Delta(), finish_reason="stop")],
                    homeskillet=_extension(a))]
    if include_usage:
        lines.append(_event(cid, created, model, [], usage=_usage(a)))
    return [*lines, b"data: [DONE]\n\n"]


async def models(request: Request) -> Response:
    principal(request, scope="hs:query")  # listing needs a valid credential too
    seen: dict[str, Model] = {}
    for cov in context(request).gateway.covenants():
        seen[cov.name] = Model(id=cov.name, kind="covenant", model=cov.resources.model)
    for cov in context(request).gateway.covenants():
        seen.setdefault(cov.resources.model, Model(id=cov.resources.model, kind="model", model=cov.resources.model))
    return json(ModelList(data=sorted(seen.values(), key=lambda m: m.id)))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
