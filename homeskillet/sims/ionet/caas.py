"""io.net Containers-as-a-Service endpoints under ``/enterprise/v1/io-cloud/caas``."""

from __future__ import annotations

import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.ionet.envelope import ApiError, QueryReader, decode_body, json_response, problem
from homeskillet.sims.ionet.serving import api
from homeskillet.sims.ionet.state import STATUS, Deployment, IonetSim
from homeskillet.sims.ionet.views import caas_details, containers, price_data, summary
from homeskillet.sims.ionet.wire import DeployRequest, ExtendRequest, UpdateRequest

__all__ = ["deployment_id", "int_list", "routes"]

PREFIX = "/enterprise/v1/io-cloud/caas"


def deployment_id(request: Request) -> str:
    """The path parameter is typed ``uuid`` in io.net's OpenAPI, so a malformed id is a 422."""
    raw = request.path_params["deployment_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(422, [problem("uuid_parsing", ["path", "deployment_id"],
                                     "Input should be a valid UUID", raw)]) from None


def int_list(q: QueryReader, name: str) -> list[int] | None:
    values = q.json_list(name)
    if values is not None and not all(type(v) is int for v in values):
        q.errors.append(problem("value_error", ["query", name],
                                "Value error, expected a JSON array of integer ids", str(values)))
        return None
    return values


async def available_replicas(request: Request, sim: IonetSim) -> Response:
    q = QueryReader(request)
    hardware_id, qty = q.integer("hardware_id"), q.integer("hardware_qty", ge=1)
    q.text("node_pool_id", required=False)  # accepted; the simulator has one pool
    q.check()
    assert hardware_id is not None and qty is not None
    hw = sim.hardware(hardware_id)
    free = sim.available(hw, qty)
    rows = [{"id": loc.id, "iso2": loc.iso2, "name": loc.name, "available_replicas": free[loc.id]}
            for loc in map(sim.location, hw.location_ids)]
    return json_response({"data": rows})


async def price(request: Request, sim: IonetSim) -> Response:
    q = QueryReader(request)
    locations = int_list(q, "location_ids")
    hardware_id = q.integer("hardware_id")
    hours = q.integer("duration_hours", ge=1)
    gpus = q.integer("gpus_per_container", ge=1)
    replicas = q.integer("replica_count", ge=1)
    q.check()
    assert locations and hardware_id is not None and hours and gpus and replicas
    quote = sim.price(sim.hardware(hardware_id), locations, gpus, replicas, hours)
    return json_response(price_data(quote, "gpus_per_container"))


async def deploy(request: Request, sim: IonetSim) -> Response:
    body = await decode_body(request, DeployRequest)
    spec = msgspec.to_builtins(body)
    dep = sim.deploy("caas", body.resource_private_name, sim.hardware(body.hardware_id), body.location_ids,
                     body.gpus_per_container, body.replica_count, body.duration_hours, spec)
    return json_response({"status": dep.status, "deployment_id": dep.id})


def _caas(request: Request, sim: IonetSim) -> Deployment:
    return sim.deployment(deployment_id(request), "caas")


async def deployment(request: Request, sim: IonetSim) -> Response:
    dep = _caas(request, sim)
    if request.method == "GET":
        return json_response({"data": caas_details(dep, sim)})
    if request.method == "DELETE":
        sim.destroy(dep)
        return json_response({"status": "termination requested", "deployment_id": dep.id})
    changes = await decode_body(request, UpdateRequest)  # PATCH
    if not dep.active:
        raise ApiError(400, f"Deployment {dep.id} is {dep.status} and cannot be updated")
    dep.spec.update({k: v for k, v in msgspec.to_builtins(changes).items() if v is not None})
    return json_response({"status": "update requested", "deployment_id": dep.id})


async def extend(request: Request, sim: IonetSim) -> Response:
    # By analogy with VMaaS ``…/vmaas/deployment/{id}/extend`` (unverified for CaaS).
    dep = _caas(request, sim)
    body = await decode_body(request, ExtendRequest)
    sim.extend(dep, body.duration_hours)
    return json_response({"data": caas_details(dep, sim)})


async def list_containers(request: Request, sim: IonetSim) -> Response:
    return json_response(containers(_caas(request, sim), sim, str(request.base_url)))


async def list_deployments(request: Request, sim: IonetSim) -> Response:
    q = QueryReader(request)
    status = q.text("status", required=False)
    allowed = [*STATUS["caas"].values(), "termination requested"]
    if status is not None and status not in allowed:
        expected = ", ".join(f"'{s}'" for s in allowed)
        q.errors.append(problem("enum", ["query", "status"], f"Input should be {expected}", status,
                                expected=expected))
    page = max(1, q.integer("page", required=False) or 1)
    size = q.integer("page_size", ge=1, required=False) or 10
    q.check()
    size = min(size, 100)
    deps = [d for d in sim.deployments.values() if d.kind == "caas" and status in (None, d.status)]
    rows = [summary(d, sim) for d in deps[(page - 1) * size: page * size]]
    statuses = sorted({d.status for d in deps})
    return json_response({"data": {"deployments": rows, "total": len(deps), "statuses": statuses}})


routes = [
    Route(f"{PREFIX}/available-replicas", api(available_replicas), methods=["GET"]),
    Route(f"{PREFIX}/price", api(price), methods=["GET"]),
    Route(f"{PREFIX}/deploy", api(deploy), methods=["POST"]),
    Route(f"{PREFIX}/deployments", api(list_deployments), methods=["GET"]),
    Route(f"{PREFIX}/deployment/{{deployment_id}}", api(deployment), methods=["GET", "PATCH", "DELETE"]),
    Route(f"{PREFIX}/deployment/{{deployment_id}}/extend", api(extend), methods=["POST"]),
    Route(f"{PREFIX}/deployment/{{deployment_id}}/containers", api(list_containers), methods=["GET"]),
]
