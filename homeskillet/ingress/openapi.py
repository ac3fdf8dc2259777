"""``GET /openapi.json``: the HTTP API described from the same msgspec Structs that decode it.

Schemas come from ``msgspec.json.schema_components`` (so they cannot drift from the code); the
path table below names, for each route, its body and reply Structs and the statuses it answers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__
from ..wire import (
    AllocationMetrics,
    Answer,
    ErrorReply,
    Query,
    QuoteReply,
    Readiness,
    Reservation,
    ReservationList,
    ReserveRequest,
    TenantUsage,
)
from .openai_wire import ChatCompletion, ChatCompletionRequest, ErrorEnvelope, ModelList

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"

# (method, path, summary, body, reply, error envelope, extra statuses, path parameters)
_ROUTES: list[tuple[str, str, str, type | None, type, type, tuple[int, ...], tuple[str, ...]]] = [
    ("post", "/v1/chat/completions", "OpenAI-compatible chat completion (stream=true for SSE)",
     ChatCompletionRequest, ChatCompletion, ErrorEnvelope, (400, 401, 403, 402, 404, 413, 422, 429, 503, 504), ()),
    ("get", "/v1/models", "Covenants and models, OpenAI-style", None, ModelList, ErrorEnvelope, (401, 403), ()),
    ("post", "/api/v1/query", "Serve a query: the answer with covenant, pools, cost and verdict",
     Query, Answer, ErrorReply, (400, 401, 403, 402, 404, 413, 422, 429, 503, 504), ()),
    ("post", "/api/v1/quote", "Negotiate without executing: winning bid and alternatives per fragment",
     Query, QuoteReply, ErrorReply, (400, 401, 403, 404, 413, 422), ()),
    ("post", "/api/v1/allocations", "Allocate a model endpoint (a reservation that names a model)",
     ReserveRequest, Reservation, ErrorReply, (400, 401, 403, 413, 503), ()),
    ("get", "/api/v1/allocations", "The caller's own allocations and reservations, newest first",
     None, ReservationList, ErrorReply, (400, 401, 403), ()),
    ("get", "/api/v1/allocations/{allocation_id}", "One of the caller's allocations",
     None, Reservation, ErrorReply, (401, 403, 404), ("allocation_id",)),
    ("delete", "/api/v1/allocations/{allocation_id}", "Release an allocation",
     None, Reservation, ErrorReply, (401, 403, 404), ("allocation_id",)),
    ("get", "/api/v1/allocations/{allocation_id}/metrics", "Utilisation and cost of an allocation",
     None, AllocationMetrics, ErrorReply, (401, 403, 404), ("allocation_id",)),
    ("post", "/api/v1/inference/{allocation_id}", "Serve a query on an allocation",
     Query, Answer, ErrorReply, (400, 401, 403, 402, 404, 413, 429), ("allocation_id",)),
    ("post", "/api/v1/compute/reserve", "Reserve compute ahead of use, with provider failover",
     ReserveRequest, Reservation, ErrorReply, (400, 401, 403, 413, 503), ()),
    ("get", "/api/v1/results/{query_id}", "A recent answer of the caller's", None, Answer, ErrorReply,
     (401, 403, 404), ("query_id",)),
    ("get", "/api/v1/usage", "The caller's spend and budget", None, TenantUsage, ErrorReply, (401, 403), ()),
    ("get", "/readyz", "Ready: NATS connected and pools quoting (503 otherwise)", None, Readiness, Readiness,
     (503,), ()),
]

_SECURED = ("/v1/", "/api/v1/")
_BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description":
           "A JWT whose tenant claim names the tenant the caller acts for (mint a development one with "
           "'homeskillet token --tenant NAME'). Required on /v1 and /api/v1 when the server runs with auth on; "
           "a body 'tenant', X-Tenant header or ?tenant= naming another tenant than the token's is 403."}
_QUERY_PARAMS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/api/v1/allocations"): [{"name": "status", "in": "query", "required": False, "schema": {
        "type": "string", "enum": ["pending", "active", "released", "failed"]}}],
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(*, auth_enabled: bool, server_url: str = "") -> dict[str, Any]:
    types: list[Any] = sorted({t for r in _ROUTES for t in (r[3], r[4], r[5]) if t is not None},
                              key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, reply, error, statuses, params in _ROUTES:
        created = method == "post" and path.endswith(("/allocations", "/reserve"))
        op: dict[str, Any] = {"summary": summary, "operationId": f"{method}_{path.strip('/').replace('/', '_')}"
                              .replace("{", "").replace("}", ""),
                              "responses": {"201" if created else "200":
                                            {"description": "OK", "content": _json(ref[reply])}}}
        for status in statuses:
            op["responses"][str(status)] = {"description": "error", "content": _json(ref[error])}
        if body is not None:
            op["requestBody"] = {"required": True, "content": _json(ref[body])}
        parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        parameters += _QUERY_PARAMS.get((method, path), [])
        if parameters:
            op["parameters"] = parameters
        if auth_enabled and path.startswith(_SECURED):
            op["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = op
    paths["/healthz"] = {"get": {"summary": "The process is up", "operationId": "get_healthz",
                                 "responses": {"200": {"description": "OK"}}}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Homeskillet", "version": __version__,
                 "description": "Covenant-driven AI inference: OpenAI-compatible chat, queries, quotes, "
                                "reservations. Errors on /v1 use OpenAI's error body; on /api/v1 an ErrorReply."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": _BEARER}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
