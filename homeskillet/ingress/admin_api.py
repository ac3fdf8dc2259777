"""The Homeskillet API under ``/api/v1``: queries, quotes, reservations (the design documents'
allocation endpoints), results and usage. Bodies and replies are ``wire`` Structs; errors are an
``ErrorReply`` with the HTTP status. Every id is looked up within the caller's tenant, so another
tenant's id gets the same 404 as an unknown one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest, HomeskilletError, TenantRateLimited, header_text
from ..gateway import error_reply
from ..wire import Query, ReserveRequest
from .http_common import context, json, principal, read_body

__all__ = ["admin_error", "routes"]

_STATUSES = ("pending", "active", "released", "failed")


def admin_error(exc: HomeskilletError) -> Response:
    headers = {"retry-after": f"{max(1, round(exc.retry_after_s))}"} if isinstance(exc, TenantRateLimited) else {}
    if exc.status == 401:
        why = header_text(exc.term or "invalid", 200).replace('"', "'")
        headers["www-authenticate"] = f'Bearer error="invalid_token", error_description="{why}"'
    return json(error_reply(exc), exc.status, headers)


async def query(request: Request) -> Response:
    q = await read_body(request, Query, what="the query")
    return json(await context(request).gateway.ask(q, principal(request, q.tenant, scope="hs:query")))


async def quote(request: Request) -> Response:
    q = await read_body(request, Query, what="the query")
    return json(await context(request).gateway.quote(q, principal(request, q.tenant, scope="hs:query")))


async def _reserve(request: Request, *, needs_model: bool) -> Response:
    req = await read_body(request, ReserveRequest, what="the reservation request")
    req.tenant = principal(request, req.tenant, scope="hs:reserve").tenant
    if needs_model and not req.model:
        raise BadRequest("an allocation serves a model: name it in 'model' "
                         "(or reserve raw compute with POST /api/v1/compute/reserve)", term="model")
    return json(await context(request).gateway.reserve(req), 201)


async def allocate(request: Request) -> Response:
    return await _reserve(request, needs_model=True)


async def reserve(request: Request) -> Response:
    return await _reserve(request, needs_model=False)


def _id(request: Request, name: str = "allocation_id") -> str:
    value: str = request.path_params[name]
    return value


async def allocations(request: Request) -> Response:
    who = principal(request, scope="hs:reserve")
    status = request.query_params.get("status")
    if status is not None and status not in _STATUSES:
        raise BadRequest(f"'status' {status!r} is not one of {', '.join(_STATUSES)}", term="status")
    return json(await context(request).gateway.allocations(who.tenant, status))


async def allocation(request: Request) -> Response:
    who = principal(request, scope="hs:reserve")
    return json(await context(request).gateway.reservation(_id(request), who.tenant))


async def allocation_metrics(request: Request) -> Response:
    who = principal(request, scope="hs:reserve")
    return json(await context(request).gateway.reservation_metrics(_id(request), who.tenant))


async def release(request: Request) -> Response:
    who = principal(request, scope="hs:reserve")
    return json(await context(request).gateway.release(_id(request), who.tenant))


async def inference(request: Request) -> Response:
    q = await read_body(request, Query, what="the query")
    who = principal(request, q.tenant, scope="hs:reserve")
    return json(await context(request).gateway.infer_on(_id(request), who.tenant, q))


async def result(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    return json(context(request).gateway.result(_id(request, "query_id"), who.tenant))


async def usage(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    return json(await context(request).gateway.usage(who.tenant))


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/query", query, methods=["POST"]),
        Route("/api/v1/quote", quote, methods=["POST"]),
        Route("/api/v1/allocations", allocate, methods=["POST"]),
        Route("/api/v1/allocations", allocations, methods=["GET"]),
        Route("/api/v1/allocations/{allocation_id}", allocation, methods=["GET"]),
        Route("/api/v1/allocations/{allocation_id}", release, methods=["DELETE"]),
        Route("/api/v1/allocations/{allocation_id}/metrics", allocation_metrics, methods=["GET"]),
        Route("/api/v1/inference/{allocation_id}", inference, methods=["POST"]),
        Route("/api/v1/compute/reserve", reserve, methods=["POST"]),
        Route("/api/v1/results/{query_id}", result, methods=["GET"]),
        Route("/api/v1/usage", usage, methods=["GET"]),
    ]
