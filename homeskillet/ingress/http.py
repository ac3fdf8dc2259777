"""The HTTP ingress: one Starlette app with the OpenAI-compatible API (``/v1``), the Homeskillet
API (``/api/v1``), ``/openapi.json``, ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``create_http_app(gateway, auth=…, extra_routes=…, lifespans=…)`` builds it; other ingresses
mount their own routes through ``extra_routes`` (the MCP server adds ``/mcp/ws`` and ``/mcp``)
and start what those routes need through ``lifespans``. ``Runtime`` serves it with uvicorn on
its own loop (``http_server.py``).

Errors: a ``HomeskilletError`` on ``/v1`` becomes OpenAI's error body; anywhere else an
``ErrorReply``; unknown paths and methods get the same JSON shapes with 404/405.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..auth import Authenticator
from ..config import HttpSettings
from ..errors import BadRequest, HomeskilletError, NotFound
from ..gateway import Gateway
from ..telemetry import get_logger
from . import admin_api, distill_api, openai_api
from .http_common import HttpContext, context, json
from .openapi import openapi_document

__all__ = ["Lifespan", "create_http_app", "on_error"]

log = get_logger("homeskillet.ingress.http")

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def _render(request: Request, exc: HomeskilletError) -> Response:
    if request.url.path.startswith("/v1/"):
        return openai_api.openai_error(exc)
    return admin_api.admin_error(exc)


async def on_error(request: Request, exc: Exception) -> Response:
    """Every error as JSON: the OpenAI error shape on ``/v1``, ours elsewhere."""
    if isinstance(exc, HomeskilletError):
        if exc.status >= 500:
            log.warning("http_error", path=request.url.path, code=exc.code, error=exc.message)
        return _render(request, exc)
    if isinstance(exc, HTTPException):
        err: HomeskilletError = NotFound(f"no route {request.url.path}; see /openapi.json", term="path") \
            if exc.status_code == 404 else BadRequest(f"{request.method} {request.url.path}: {exc.detail}")
        err.status = exc.status_code
        return _render(request, err)
    log.exception("http_crashed", path=request.url.path)
    return _render(request, HomeskilletError(f"internal error: {type(exc).__name__}"))


async def healthz(request: Request) -> Response:
    return json({"status": "ok"})


async def readyz(request: Request) -> Response:
    r = context(request).gateway.readiness()
    return json(r, 200 if r.ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_http_app(gateway: Gateway, *, auth: Authenticator, settings: HttpSettings | None = None,
                    extra_routes: Sequence[BaseRoute] = (), lifespans: Sequence[Lifespan] = ()) -> Starlette:
    """The HTTP API over ``gateway``. ``extra_routes`` are mounted beside ours (first match wins, ours
    first); each of ``lifespans`` is entered on startup and left on shutdown, in order."""
    s = settings or HttpSettings()
    doc = openapi_document(auth_enabled=auth.enabled, server_url=s.public_url)

    async def openapi(request: Request) -> Response:
        return json(doc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for make in lifespans:
                await stack.enter_async_context(make(app))
            yield

    routes: list[BaseRoute] = [
        *openai_api.routes(),
        *admin_api.routes(),
        *distill_api.routes(),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HomeskilletError: on_error, HTTPException: on_error, Exception: on_error})
    app.state.hs = HttpContext(gateway, auth, max_body_bytes=s.max_body_bytes)
    return app
