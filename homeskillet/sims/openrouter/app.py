"""OpenRouter simulator over HTTP: thin handlers that decode, call ``OpenRouterSim``, encode.

Paths under ``/api/v1`` (so the openai SDK works with ``base_url=http://host/api/v1``):
``GET models`` (public), ``POST chat/completions`` (JSON or SSE), ``GET generation?id=``,
``GET key`` (and the older ``auth/key``), ``GET credits``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from homeskillet.sims.base import SimConfig, count_tokens
from homeskillet.sims.openrouter.state import KNOWN_PARAMETERS, OpenRouterSim, Run
from homeskillet.sims.openrouter.wire import (
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Choice,
    Chunk,
    ChunkChoice,
    Delta,
    ErrorDetail,
    OpenRouterError,
    Usage,
)

__all__ = ["create_app"]

_chat_decoder = msgspec.json.Decoder(ChatRequest)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status, media_type="application/json")


def _enter(request: Request, auth: bool = True) -> OpenRouterSim:
    sim: OpenRouterSim = request.app.state.sim
    sim.counters["requests"] += 1
    if sim.config.faults.outage:
        raise OpenRouterError(503, "Service unavailable (simulated outage)")
    if auth:
        sim.check_key(request.headers.get("authorization", ""))
    return sim


def _decode_chat(raw: bytes) -> tuple[ChatRequest, set[str]]:
    """The request, and which known parameters it sets (for ``provider.require_parameters``)."""
    try:
        req = _chat_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # malformed JSON and invalid fields alike are a 400
        raise OpenRouterError(400, f"Invalid request body: {exc}") from exc
    keys = {"max_tokens" if k == "max_completion_tokens" else k for k in msgspec.json.decode(raw)}
    return req, keys & KNOWN_PARAMETERS


async def _chat(request: Request) -> Response:
    sim = _enter(request)
    req, params = _decode_chat(await request.body())
    sim.rate_limit()
    run = await sim.run(req, params)
    if req.stream:
        return StreamingResponse(_stream(sim, run), media_type="text/event-stream")
    await sim.sleep_ms(run.latency_ms)
    usage = sim.charge(run, streamed=False)
    choice = Choice(message=ChatMessage(content=run.text), finish_reason=run.finish_reason,
                    native_finish_reason=run.finish_reason)  # fmt: skip
    return _json(ChatCompletion(id=run.id, created=run.created, model=run.model.id, provider=run.host,
                                choices=[choice], usage=usage, error=_error(run)))  # fmt: skip


def _error(run: Run) -> ErrorDetail | msgspec.UnsetType:
    """After a 200 the HTTP status cannot change: a model failure travels in the body."""
    if not run.error:
        return msgspec.UNSET
    return ErrorDetail(code=502, message=run.error, metadata={"provider_name": run.host})


def _sse(run: Run, choices: list[ChunkChoice], usage: Usage | None = None,
         error: ErrorDetail | msgspec.UnsetType = msgspec.UNSET) -> bytes:
    chunk = Chunk(id=run.id, created=run.created, model=run.model.id, provider=run.host, choices=choices,
                  usage=usage, error=error)  # fmt: skip
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


async def _stream(sim: OpenRouterSim, run: Run) -> AsyncGenerator[bytes, None]:
    """OpenAI chunks; the modelled latency is spread over them. A client that hangs up mid-stream is
    billed for the tokens it was sent (the generation is marked cancelled)."""
    pieces = [w if i == 0 else " " + w for i, w in enumerate(run.text.split(" ") if run.text else [])]
    step, sent, billed = run.latency_ms / (len(pieces) + 1), "", False
    try:
        yield b": OPENROUTER PROCESSING\n\n"  # OpenRouter's keep-alive comment; SSE clients skip it
        yield _sse(run, [ChunkChoice(delta=Delta(role="assistant", content=""))])
        for piece in pieces:
            await sim.sleep_ms(step)
            sent += piece
            yield _sse(run, [ChunkChoice(delta=Delta(content=piece))])
        await sim.sleep_ms(step)
        reason = run.finish_reason
        yield _sse(run, [ChunkChoice(delta=Delta(content="" if run.error else None), finish_reason=reason,
                                     native_finish_reason=reason)], error=_error(run))
        usage, billed = sim.charge(run, streamed=True), True
        yield _sse(run, [], usage)  # OpenRouter always reports usage, in a last chunk without choices
        yield b"data: [DONE]\n\n"
    finally:
        if not billed:
            sim.charge(run, streamed=True, completion_tokens=count_tokens(sent))


def _generation(request: Request) -> Response:
    sim = _enter(request)
    gen_id = request.query_params.get("id")
    if not gen_id:
        raise OpenRouterError(400, "Missing query parameter: id")
    if gen_id not in sim.generations:
        raise OpenRouterError(404, f"Generation {gen_id} not found")
    return _json({"data": sim.generations[gen_id]})


def _key(request: Request) -> Response:
    sim = _enter(request)
    return _json({"data": {
        "label": f"sk-or-v1-{sim.config.api_key[:3]}...", "limit": sim.credits_usd, "usage": sim.usage_usd,
        "limit_remaining": sim.credits_usd - sim.usage_usd, "is_free_tier": False,
        "is_provisioning_key": False, "rate_limit": {"requests": -1, "interval": "10s"},
    }})  # fmt: skip


def _credits(request: Request) -> Response:
    sim = _enter(request)
    return _json({"data": {"total_credits": sim.credits_usd, "total_usage": sim.usage_usd}})


def _models(request: Request) -> Response:
    return _json({"data": list(_enter(request, auth=False).models.values())})


def _render(request: Request, exc: Exception) -> Response:
    if isinstance(exc, OpenRouterError):  # OpenRouter's code is the HTTP status, as a number
        body = {"error": {"code": exc.status, "message": exc.message, "metadata": exc.metadata}}
        return Response(msgspec.json.encode(body), exc.status, exc.headers, media_type="application/json")
    assert isinstance(exc, HTTPException)  # unknown path or method, still in the provider's envelope
    return _json({"error": {"code": exc.status_code, "message": exc.detail, "metadata": {}}}, exc.status_code)


def create_app(config: SimConfig | None = None, *, clock: Callable[[], float] | None = None) -> Starlette:
    """The simulator as an ASGI app; its state is ``app.state.sim`` (an ``OpenRouterSim``)."""
    routes = [
        Route("/api/v1/models", _models, methods=["GET"]),
        Route("/api/v1/chat/completions", _chat, methods=["POST"]),
        Route("/api/v1/generation", _generation, methods=["GET"]),
        Route("/api/v1/key", _key, methods=["GET"]),
        Route("/api/v1/auth/key", _key, methods=["GET"]),
        Route("/api/v1/credits", _credits, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={OpenRouterError: _render, HTTPException: _render})
    app.state.sim = OpenRouterSim(config or SimConfig(), clock)
    return app
