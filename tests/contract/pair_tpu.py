"""Cloud TPU connector paired with the TPU simulator (fault-free, seeded, Operations done at once)."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import AllocationRequest, Connector
from homeskillet.providers.tpu import TpuConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.tpu import TpuSim, create_app

MODEL = "gemma-2b"
# The simulator serves a node's model server on its own app, not at the node's IP.
SIM_ENDPOINT = "{base_url}/node/{zone}/{node_id}"


def make_app() -> Any:
    # time_scale 0 with zero durations: every Operation is done at the next request.
    return create_app(SimConfig(seed=5, time_scale=0, extra={"create_s": 0, "fail_s": 0, "op_s": 0}))


def make_connector(base_url: str, api_key: str) -> Connector:
    return TpuConnector(base_url=base_url, api_key=api_key, project="hs-test", zone="us-west4-a",
                        accelerator_type="v5litepod-8", endpoint=SIM_ENDPOINT, poll_interval_s=0.01,
                        timeout_s=5, infer_timeout_s=10, ready_timeout_s=10, release_timeout_s=10)


def live_allocations(app: Any) -> int:
    sim: TpuSim = app.state.sim
    return sum(1 for n in sim.nodes.values() if n.state != "DELETING")


PAIR = Pair(
    provider="tpu",
    make_app=make_app,
    make_connector=make_connector,
    model=MODEL,
    api_key="sim-key",
    ready_path="/v2/projects/hs-test/locations",
    want=AllocationRequest(model=MODEL, accelerator="tpu", count=8, ready_timeout_s=10),
    live_allocations=live_allocations,
)
