"""Google Cloud TPU API v2 simulator: an ASGI app speaking ``tpu.googleapis.com/v2`` (§4).

Auth: ``Authorization: Bearer <token>`` where the token is ``SimConfig.api_key``. Paths served
(``{base}`` = ``/v2/projects/{project}/locations/{zone}``):

- ``GET /v2/projects/{p}/locations``, ``GET {base}``
- ``GET {base}/acceleratorTypes[/{name}]``, ``GET {base}/runtimeVersions[/{name}]``
- ``GET|POST {base}/nodes`` (``?nodeId=``; zone ``-`` lists every zone), ``GET|DELETE {base}/nodes/{id}``,
  ``POST {base}/nodes/{id}:stop``, ``POST {base}/nodes/{id}:start``
- ``GET|POST {base}/queuedResources`` (``?queuedResourceId=``), ``GET|DELETE {base}/queuedResources/{id}``
  (``?force=true``), ``POST {base}/queuedResources/{id}:reset``
- ``GET {base}/operations``, ``GET /v2/{operation name}``, ``POST /v2/{operation name}:cancel``
- non-Google: ``GET /_sim/prices`` (price catalogue) and the node's inference server at
  ``POST /node/{zone}/{node_id}/v1/chat/completions`` (really the node's own address)

Every mutation returns an ``Operation``; it completes by ``app.state.sim.clock`` (``create_s``,
``op_s``, plus ``slow_ready_s``). JSON is proto3-style: default values are omitted, so a pending
Operation has no ``done`` key. Errors use Google's envelope; a refused create is an Operation
ending with gRPC code 8 RESOURCE_EXHAUSTED. Faults: outage/unavailable 503, rate limit 429,
timeout 504, ``refuse_rate`` (create/start/queue admission refused), ``half_created_rate``
(create fails, STOPPED node left behind), ``preempt_rate`` (spot node evicted mid-inference),
``slow_ready_s``. State: ``app.state.sim`` (``TpuSim``: nodes, operations, billing, ``preempt()``)
and ``app.state.queue`` (queued resources).

The clock and the OpenAI-compatible server are provider-neutral and imported from
``homeskillet.sims.ionet``; they are candidates for ``sims/base.py``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from homeskillet.sims.base import SimConfig
from homeskillet.sims.ionet.clock import Clock, ManualClock, ScaledClock, clock_for
from homeskillet.sims.tpu import api, discovery, serving
from homeskillet.sims.tpu.catalog import ACCELERATORS, AcceleratorSpec, FamilyPrice, TpuKnobs, knobs_from
from homeskillet.sims.tpu.errors import GoogleError
from homeskillet.sims.tpu.queued import Queue, QueuedResource
from homeskillet.sims.tpu.state import BillingSegment, Node, Operation, TpuSim

__all__ = [
    "ACCELERATORS",
    "AcceleratorSpec",
    "BillingSegment",
    "Clock",
    "FamilyPrice",
    "GoogleError",
    "ManualClock",
    "Node",
    "Operation",
    "Queue",
    "QueuedResource",
    "ScaledClock",
    "TpuKnobs",
    "TpuSim",
    "create_app",
]

_STATUS = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods still answer in Google's envelope."""
    assert isinstance(exc, HTTPException)
    status = _STATUS.get(exc.status_code, "INVALID_ARGUMENT")
    return GoogleError(status, f"{exc.detail}: {request.method} {request.url.path}").response()


def create_app(config: SimConfig | None = None, *, clock: Clock | None = None) -> Starlette:
    """Build the simulator; state on ``app.state.sim`` (``TpuSim``) and ``app.state.queue``."""
    config = config or SimConfig()
    app = Starlette(routes=[*discovery.routes, *api.routes, *serving.routes],
                    exception_handlers={HTTPException: _http_error})
    app.state.sim = TpuSim(config, knobs_from(config), clock or clock_for(config))
    app.state.queue = Queue(app.state.sim)
    return app
