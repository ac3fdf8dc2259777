"""io.net simulator: an ASGI app speaking io.net's REST API (``provider-apis.md`` §3).

Base URL in reality: ``https://api.io.solutions``; auth header ``x-api-key``. Paths served:

CaaS (``/enterprise/v1/io-cloud/caas``)
    ``GET available-replicas``, ``GET price``, ``POST deploy``, ``GET deployments``,
    ``GET|PATCH|DELETE deployment/{id}``, ``POST deployment/{id}/extend`` (unverified, by analogy
    with VMaaS), ``GET deployment/{id}/containers`` (workers with ``public_url``).
VMaaS (``/enterprise/v1/io-cloud/vmaas``)
    ``GET hardware`` (public), ``GET price``, ``POST deploy``, ``GET|DELETE deployment/{id}``,
    ``POST deployment/{id}/extend``.
Inference (simulator stand-in for the container's own URL)
    ``POST /deployment/{id}/v1/chat/completions``, ``GET /deployment/{id}/v1/models``.

Semantics: prepaid whole hours with fees; deployments start after ``ready_s + slow_ready_s`` and
complete when their hours run out, both by ``app.state.sim.clock``; destroy refunds the unused
share except the first hour (``sim.ledger``). Errors are FastAPI's: 422 ``detail[]``, else
``{"detail": "..."}``. Faults (``FaultPlan``): outage and unavailable 503, rate limit 429,
timeout 504 after ``timeout_s``, refuse and stale offer 400 at deploy, half-created 503 leaving a
paid ``failed`` deployment. io.net sells no spot capacity, so ``preempt_rate`` does not apply.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.base import SimConfig
from homeskillet.sims.ionet import caas, vmaas
from homeskillet.sims.ionet.catalog import Hardware, IonetKnobs, Location, knobs_from
from homeskillet.sims.ionet.clock import Clock, ManualClock, ScaledClock, clock_for
from homeskillet.sims.ionet.envelope import json_response
from homeskillet.sims.ionet.serving import chat_completions, list_models
from homeskillet.sims.ionet.state import Deployment, IonetSim, LedgerEntry

__all__ = [
    "Clock",
    "Deployment",
    "Hardware",
    "IonetKnobs",
    "IonetSim",
    "LedgerEntry",
    "Location",
    "ManualClock",
    "ScaledClock",
    "create_app",
]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer like FastAPI: ``{"detail": "Not Found"}``."""
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


def create_app(config: SimConfig | None = None, *, clock: Clock | None = None) -> Starlette:
    """Build the simulator; its state is ``app.state.sim`` (an ``IonetSim``)."""
    config = config or SimConfig()
    routes = [
        *caas.routes,
        *vmaas.routes,
        Route("/deployment/{deployment_id}/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/deployment/{deployment_id}/v1/models", list_models, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.sim = IonetSim(config, knobs_from(config), clock or clock_for(config))
    return app
