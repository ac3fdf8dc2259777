"""io.net connector paired with the io.net simulator (fault-free, seeded, containers ready at once)."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import AllocationRequest, Connector
from homeskillet.providers.ionet import IonetConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.ionet import IonetSim, create_app

MODEL = "mistral-7b"


def make_app() -> Any:
    # time_scale 0: a frozen clock, so a prepaid hour never runs out during the suite; ready_s 0:
    # a deployment runs from the first poll after it is made.
    return create_app(SimConfig(seed=11, time_scale=0, extra={"ready_s": 0}))


def make_connector(base_url: str, api_key: str) -> Connector:
    return IonetConnector(base_url=base_url, api_key=api_key, gpu_model="RTX 4090", poll_interval_s=0.01,
                          timeout_s=5, infer_timeout_s=10, ready_timeout_s=10)


def live_allocations(app: Any) -> int:
    sim: IonetSim = app.state.sim
    return sum(1 for d in sim.deployments.values() if d.active)


PAIR = Pair(
    provider="ionet",
    make_app=make_app,
    make_connector=make_connector,
    model=MODEL,
    ready_path="/enterprise/v1/io-cloud/vmaas/hardware",
    want=AllocationRequest(model=MODEL, gpu_model="RTX 4090", count=1, duration_s=3600, ready_timeout_s=10),
    live_allocations=live_allocations,
)
