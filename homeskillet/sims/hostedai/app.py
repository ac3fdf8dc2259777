"""hosted.ai simulator over HTTP: thin handlers that decode, call ``HostedAISim``, encode.

Paths (``provider-apis.md`` §9) under ``/api/v1``: ``POST auth/token``, ``POST allocations`` (an
``Idempotency-Key`` header replays the first create),
``GET|DELETE allocations/{id}``, ``GET allocations/{id}/metrics``, ``POST inference/{id}``, and our
own ``GET pools``. Every error, including an unknown path, is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.base import SimConfig
from homeskillet.sims.hostedai.state import HostedAISim
from homeskillet.sims.hostedai.wire import AllocateRequest, HostedAIError, InferenceRequest, TokenRequest

__all__ = ["create_app"]

T = TypeVar("T")


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(obj), status, headers, media_type="application/json")


async def _decode(request: Request, typ: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.body(), type=typ)
    except msgspec.DecodeError as exc:  # malformed JSON and invalid fields alike are a 422
        raise HostedAIError(422, "invalid_request", str(exc)) from exc


async def _enter(request: Request, auth: bool = True) -> HostedAISim:
    """What every endpoint does first: outage, auth, random faults, expiry sweep."""
    sim: HostedAISim = request.app.state.sim
    sim.counters["requests"] += 1
    if sim.config.faults.outage:  # before auth: a down gateway answers 503 whatever the token
        raise HostedAIError(503, "service_unavailable", "hosted.ai is down (simulated outage)")
    if auth:
        sim.authorize(request.headers.get("authorization", ""))
    await sim.inject_faults()
    sim.sweep()
    return sim


async def _token(request: Request) -> Response:
    sim = await _enter(request, auth=False)
    return _json(sim.issue_token((await _decode(request, TokenRequest)).api_key))


async def _pools(request: Request) -> Response:
    # Our addition, not in §9: a pool agent quotes free capacity and price without allocating.
    sim = await _enter(request)
    data = [
        msgspec.structs.asdict(p) | {"available": p.capacity - sim.in_use(p.id)} for p in sim.pools.values()
    ]
    return _json({"data": data})


async def _allocate(request: Request) -> Response:
    sim = await _enter(request)
    # Our addition, not in §9: an ``Idempotency-Key`` header makes a retried create return the
    # allocation the first attempt made, so a client that gave up waiting can find and release it.
    key = request.headers.get("idempotency-key")
    if key and key in sim.idempotency:
        return _json(sim.leases[sim.idempotency[key]].view)
    lease = sim.allocate(await _decode(request, AllocateRequest))
    if key:
        sim.idempotency[key] = lease.view.id
    pool = sim.pools[lease.view.pool_id]
    # Slow allocation under load: the delay grows with how full the pool is. The allocation already
    # exists while the client waits, so a client that gives up leaves it behind, billed.
    await sim.sleep_ms(sim.config.faults.slow_ready_s * 1000 * sim.in_use(pool.id) / max(pool.capacity, 1))
    return _json(lease.view, 201)


async def _allocation(request: Request) -> Response:
    sim = await _enter(request)
    lease = sim.lease(request.path_params["alloc_id"])
    if request.method == "DELETE" and lease.view.status == "active":
        sim.settle(lease, "released")
    return _json(lease.view)  # DELETE returns the final allocation with billed_usd


async def _metrics(request: Request) -> Response:
    sim = await _enter(request)
    return _json(sim.metrics(sim.lease(request.path_params["alloc_id"])))


async def _inference(request: Request) -> Response:
    sim = await _enter(request)
    lease = sim.lease(request.path_params["alloc_id"], active=True)
    return _json(await sim.infer(lease, await _decode(request, InferenceRequest)))


def _render(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HostedAIError):
        return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status, exc.headers)
    assert isinstance(exc, HTTPException)  # unknown path or method, still in the provider's envelope
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json({"error": {"code": code, "message": str(exc.detail)}}, exc.status_code, exc.headers)


def create_app(config: SimConfig | None = None, *, clock: Callable[[], float] | None = None) -> Starlette:
    """The simulator as an ASGI app; its state is ``app.state.sim`` (a ``HostedAISim``)."""
    routes = [
        Route("/api/v1/auth/token", _token, methods=["POST"]),
        Route("/api/v1/pools", _pools, methods=["GET"]),
        Route("/api/v1/allocations", _allocate, methods=["POST"]),
        Route("/api/v1/allocations/{alloc_id}", _allocation, methods=["GET", "DELETE"]),
        Route("/api/v1/allocations/{alloc_id}/metrics", _metrics, methods=["GET"]),
        Route("/api/v1/inference/{alloc_id}", _inference, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HostedAIError: _render, HTTPException: _render})
    app.state.sim = HostedAISim(config or SimConfig(), clock)
    return app
