"""io.net VM-as-a-Service endpoints under ``/enterprise/v1/io-cloud/vmaas``.

VMaaS shares GPU stock and prepaid semantics with CaaS (same ``IonetSim``). The documented
endpoints are hardware, price, destroy and extend; deploy and get are served too so the destroy
and extend paths have something to act on (their shapes follow the documented extend response).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.ionet.caas import deployment_id
from homeskillet.sims.ionet.envelope import ApiError, QueryReader, decode_body, json_response, problem
from homeskillet.sims.ionet.serving import api
from homeskillet.sims.ionet.state import Deployment, IonetSim
from homeskillet.sims.ionet.views import price_data, vm_details
from homeskillet.sims.ionet.wire import ExtendRequest, VmDeployRequest

__all__ = ["routes"]

PREFIX = "/enterprise/v1/io-cloud/vmaas"
CARDS = (1, 2, 4, 8)  # VM sizes offered per hardware, capped by max_gpus_per_container


async def hardware(request: Request, sim: IonetSim) -> Response:
    q = QueryReader(request)
    gpu = (q.text("gpu", required=False) or "").lower()
    family = (q.text("gpu_family", required=False) or "").lower()
    regions = {r.strip().upper() for r in (q.text("regions", required=False) or "").split(",") if r.strip()}
    vram_min = q.integer("gpu_memory_min", required=False)
    vram_max = q.integer("gpu_memory_max", required=False)
    q.check()
    rows: list[dict[str, Any]] = []
    for hw in sim.knobs.hardware:
        name = hw.hardware_name.lower()
        if gpu not in name or family not in name:
            continue
        if hw.vram_gb < (vram_min or 0) or (vram_max is not None and hw.vram_gb > vram_max):
            continue
        for loc in map(sim.location, hw.location_ids):
            if regions and loc.iso2 not in regions:
                continue
            free = sim.free_gpus[hw.hardware_id, loc.id]
            rows.extend({
                "id": f"{hw.hardware_id}__{n}__{loc.iso2}", "deploy_id": hw.hardware_id,
                "name": hw.hardware_name, "num_cards": n, "supplier": "internal", "sold_out": free < n,
                "price": round(hw.usd_per_gpu_hour * n, 6), "vram_per_card": hw.vram_gb,
                "interconnect": None, "nvlink": False, "storage": 500 * n, "vcpu": 16 * n,
                "memory": 64 * n, "location": loc.iso2,
            } for n in CARDS if n <= hw.max_gpus_per_container)
    return json_response({"data": {"hardware": rows}})


def _locations(sim: IonetSim, keys: list[Any]) -> list[int]:
    """VMaaS takes location ids or ISO codes (the docs' own example sends ``["US"]``)."""
    if not all(type(k) in (int, str) for k in keys):
        raise ApiError(422, [problem("value_error", ["query", "location_ids"],
                                     "Value error, expected a JSON array of ids or ISO codes", str(keys))])
    return [sim.location(k).id for k in keys]


async def price(request: Request, sim: IonetSim) -> Response:
    q = QueryReader(request)
    keys = q.json_list("location_ids")
    hardware_id = q.integer("hardware_id")
    currency = q.text("currency")
    if currency is not None and currency not in ("usdc", "iocoin"):
        q.errors.append(problem("enum", ["query", "currency"], "Input should be 'usdc' or 'iocoin'",
                                currency, expected="'usdc' or 'iocoin'"))
    hours = q.integer("duration_hours", ge=1)
    gpus = q.integer("gpus_per_vm", ge=1)
    replicas = q.integer("replica_count", ge=1)
    q.check()
    assert keys and hardware_id is not None and hours and gpus and replicas
    quote = sim.price(sim.hardware(hardware_id), _locations(sim, keys), gpus, replicas, hours)
    return json_response(price_data(quote, "gpus_per_vm"))


async def deploy(request: Request, sim: IonetSim) -> Response:
    body = await decode_body(request, VmDeployRequest)
    spec = {"ssh_keys": body.ssh_keys, "github_ids": body.github_ids or []}
    dep = sim.deploy("vmaas", body.resource_private_name, sim.hardware(body.hardware_id),
                     _locations(sim, body.location_ids), body.gpus_per_vm, 1, body.duration_hours, spec)
    return json_response({"status": dep.status, "deployment_id": dep.id})


def _vm(request: Request, sim: IonetSim) -> Deployment:
    return sim.deployment(deployment_id(request), "vmaas")


async def deployment(request: Request, sim: IonetSim) -> Response:
    dep = _vm(request, sim)
    if request.method == "DELETE":
        sim.destroy(dep)
        return json_response({"status": "termination requested", "deployment_id": dep.id})
    return json_response({"data": vm_details(dep, sim)})


async def extend(request: Request, sim: IonetSim) -> Response:
    dep = _vm(request, sim)
    body = await decode_body(request, ExtendRequest)
    sim.extend(dep, body.duration_hours)
    return json_response({"data": vm_details(dep, sim)})


routes = [
    Route(f"{PREFIX}/hardware", api(hardware, auth=False), methods=["GET"]),  # documented as public
    Route(f"{PREFIX}/price", api(price), methods=["GET"]),
    Route(f"{PREFIX}/deploy", api(deploy), methods=["POST"]),
    Route(f"{PREFIX}/deployment/{{deployment_id}}", api(deployment), methods=["GET", "DELETE"]),
    Route(f"{PREFIX}/deployment/{{deployment_id}}/extend", api(extend), methods=["POST"]),
]
