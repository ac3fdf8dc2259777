"""Discovery endpoints (locations, accelerator types, runtime versions) and the simulator's prices.

``GET /_sim/prices`` is **not a Google API**: Cloud TPU publishes no prices, so the simulator
serves its configured catalogue there for the connector to quote from (USD per chip-hour, and per
node-hour for each accelerator type).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.tpu.api import BASE, page
from homeskillet.sims.tpu.catalog import ACCELERATORS
from homeskillet.sims.tpu.errors import google_json, not_found
from homeskillet.sims.tpu.gate import google_api, sim_of

__all__ = ["routes"]


def _location(project: str, zone: str) -> dict[str, object]:
    return {"name": f"projects/{project}/locations/{zone}", "locationId": zone}


async def locations(request: Request) -> Response:
    project = request.path_params["project"]
    return page(request, [_location(project, z) for z in sorted(sim_of(request).knobs.zones)], "locations")


async def location(request: Request) -> Response:
    p = request.path_params
    sim_of(request).check_zone(p["project"], p["zone"])
    return google_json(_location(p["project"], p["zone"]))


def _accelerator(project: str, zone: str, name: str) -> dict[str, object]:
    spec = ACCELERATORS[name]
    return {"name": f"projects/{project}/locations/{zone}/acceleratorTypes/{name}", "type": name,
            "acceleratorConfigs": [{"type": spec.config_type, "topology": spec.topology}]}


async def accelerator_types(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"])
    offered = sim.knobs.zones[p["zone"]]
    names = [name for name, spec in ACCELERATORS.items() if spec.family in offered]
    if (wanted := p.get("name")) is not None:
        if wanted not in names:
            raise not_found(f"projects/{p['project']}/locations/{p['zone']}/acceleratorTypes/{wanted}")
        return google_json(_accelerator(p["project"], p["zone"], wanted))
    return page(request, [_accelerator(p["project"], p["zone"], n) for n in names], "acceleratorTypes")


async def runtime_versions(request: Request) -> Response:
    sim, p = sim_of(request), request.path_params
    sim.check_zone(p["project"], p["zone"])
    prefix = f"projects/{p['project']}/locations/{p['zone']}/runtimeVersions"
    versions = [{"name": f"{prefix}/{v}", "version": v} for v in sim.knobs.runtime_versions]
    if (wanted := p.get("name")) is not None:
        for v in versions:
            if v["version"] == wanted:
                return google_json(v)
        raise not_found(f"{prefix}/{wanted}")
    return page(request, versions, "runtimeVersions")


async def prices(request: Request) -> Response:
    sim = sim_of(request)
    families = [{"family": f, "onDemandUsdPerChipHour": p.on_demand, "spotUsdPerChipHour": p.spot}
                for f, p in sorted(sim.knobs.prices.items())]
    types = [{"acceleratorType": s.name, "family": s.family, "chips": s.chips,
              "onDemandUsdPerHour": round(s.chips * sim.knobs.prices[s.family].on_demand, 6),
              "spotUsdPerHour": round(s.chips * sim.knobs.prices[s.family].spot, 6),
              "zones": sorted(z for z, fams in sim.knobs.zones.items() if s.family in fams)}
             for s in ACCELERATORS.values() if s.family in sim.knobs.prices]
    return google_json({"note": "Homeskillet simulator catalogue, not a Google API: Cloud TPU publishes no "
                                "prices. Billing is per second while a node is READY; spot and preemptible "
                                "nodes pay the spot rate.",
                        "currency": "USD", "families": families, "acceleratorTypes": types})


routes = [
    Route("/v2/projects/{project}/locations", google_api("locations", locations), methods=["GET"]),
    Route(BASE, google_api("locations", location, item=True), methods=["GET"]),
    Route(f"{BASE}/acceleratorTypes", google_api("acceleratorTypes", accelerator_types), methods=["GET"]),
    Route(f"{BASE}/acceleratorTypes/{{name}}", google_api("acceleratorTypes", accelerator_types, item=True),
          methods=["GET"]),
    Route(f"{BASE}/runtimeVersions", google_api("runtimeVersions", runtime_versions), methods=["GET"]),
    Route(f"{BASE}/runtimeVersions/{{name}}", google_api("runtimeVersions", runtime_versions, item=True),
          methods=["GET"]),
    Route("/_sim/prices", prices, methods=["GET"]),
]
