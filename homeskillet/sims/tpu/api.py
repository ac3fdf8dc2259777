"""Cloud TPU v2 resource endpoints: nodes, queued resources, operations.

Custom verbs follow Google's ``name:verb`` form (``…/nodes/n1:stop``, ``…/operations/op:cancel``),
so POSTs on a resource path split the verb off the last segment.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.tpu.errors import GoogleError, decode_body, google_json, invalid, not_found, query
from homeskillet.sims.tpu.gate import google_api, queue_of, sim_of
from homeskillet.sims.tpu.lifecycle import create_node, delete_node, start_node, stop_node
from homeskillet.sims.tpu.render import node_json, operation_json, prune
from homeskillet.sims.tpu.wire import NodeBody, QueuedResourceBody

__all__ = ["page", "routes"]

BASE = "/v2/projects/{project}/locations/{zone}"


def page(request: Request, items: Sequence[dict[str, Any]], key: str) -> Response:
    """``pageSize``/``pageToken`` paging; proto3 drops the list key when it is empty."""
    q = request.query_params
    try:
        size = int(query(q, "pageSize") or 0)
        token_in = query(q, "pageToken")
        start = int(base64.urlsafe_b64decode(token_in).decode()) if token_in else 0
    except ValueError:
        raise invalid("page_token", "Invalid page token or page size") from None
    if size < 0 or start < 0:
        raise invalid("page_size", "page_size and page_token must not be negative")
    end = len(items) if size == 0 else start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return google_json(prune({key: list(items[start:end]), "nextPageToken": token, "unreachable": []}))


def _verb(request: Request, segment: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    name, _, verb = request.path_params[segment].partition(":")
    if request.method == "POST" and verb not in allowed:
        raise GoogleError("NOT_FOUND", f"Method {verb or '(none)'!r} not found on {name}")
    if request.method != "POST" and verb:
        raise GoogleError("NOT_FOUND", f"Method {verb!r} needs POST")
    return name, verb


async def nodes(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"], wildcard=request.method == "GET")
    if request.method == "GET":
        found = [n for n in sim.nodes.values()
                 if n.project == p["project"] and p["zone"] in ("-", n.zone)]
        return page(request, [node_json(n, typed=False) for n in found], "nodes")
    body = decode_body(await request.body(), NodeBody, "node")
    op = create_node(sim, p["project"], p["zone"], query(request.query_params, "nodeId"), body)
    return google_json(operation_json(op))


async def node(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"])
    node_id, verb = _verb(request, "node", ("stop", "start"))
    found = sim.node(p["project"], p["zone"], node_id)
    if request.method == "GET":
        return google_json(node_json(found, typed=False))
    if request.method == "DELETE":
        if found.state == "DELETING":
            raise GoogleError("FAILED_PRECONDITION", f"Node {found.name} is already being deleted")
        return google_json(operation_json(delete_node(sim, found)))
    op = stop_node(sim, found) if verb == "stop" else start_node(sim, found)
    return google_json(operation_json(op))


async def queued_resources(request: Request) -> Response:
    sim, queue, p = sim_of(request), queue_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"], wildcard=request.method == "GET")
    if request.method == "GET":
        found = [q.json() for q in queue.items.values()
                 if q.project == p["project"] and p["zone"] in ("-", q.zone)]
        return page(request, found, "queuedResources")
    raw = await request.body()
    body = decode_body(raw, QueuedResourceBody, "queued_resource")
    echo = {k: v for k, v in msgspec.to_builtins(body).items()
            if k in ("tpu", "spot", "guaranteed", "bestEffort", "queueingPolicy", "reservationName")}
    op = queue.create(p["project"], p["zone"], query(request.query_params, "queuedResourceId"), body, echo)
    return google_json(operation_json(op))


async def queued_resource(request: Request) -> Response:
    sim, queue, p = sim_of(request), queue_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"])
    qr_id, _ = _verb(request, "qr", ("reset",))
    found = queue.get(p["project"], p["zone"], qr_id)
    if request.method == "GET":
        return google_json(found.json())
    if request.method == "DELETE":
        force = request.query_params.get("force", "false").lower() == "true"
        return google_json(operation_json(queue.delete(found, force=force)))
    return google_json(operation_json(queue.reset(found)))


async def operations(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"], wildcard=True)
    prefix = f"projects/{p['project']}/locations/"
    found = [operation_json(op) for op in sim.operations.values()
             if op.name.startswith(prefix) and p["zone"] in ("-", op.name.split("/")[3])]
    return page(request, found, "operations")


async def operation(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    op_id, verb = _verb(request, "op", ("cancel",))
    name = f"projects/{p['project']}/locations/{p['zone']}/operations/{op_id}"
    if (op := sim.operations.get(name)) is None:
        raise not_found(name)
    if verb == "cancel":
        sim.cancel(op)
        return google_json({})
    return google_json(operation_json(op))


routes = [
    Route(f"{BASE}/nodes", google_api("nodes", nodes), methods=["GET", "POST"]),
    Route(f"{BASE}/nodes/{{node}}", google_api("nodes", node, item=True), methods=["GET", "DELETE", "POST"]),
    Route(f"{BASE}/queuedResources", google_api("queuedResources", queued_resources),
          methods=["GET", "POST"]),
    Route(f"{BASE}/queuedResources/{{qr}}", google_api("queuedResources", queued_resource, item=True),
          methods=["GET", "DELETE", "POST"]),
    Route(f"{BASE}/operations", google_api("operations", operations), methods=["GET"]),
    Route(f"{BASE}/operations/{{op}}", google_api("operations", operation, item=True),
          methods=["GET", "POST"]),
]
