"""hosted.ai: the §9 allocation API, paired with ``homeskillet.sims.hostedai``."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import AllocationRequest, Connector
from homeskillet.providers.hostedai import HostedAIConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.hostedai import create_app


def make_app() -> Any:
    return create_app(SimConfig(seed=3, time_scale=0))


def make_connector(base_url: str, api_key: str) -> Connector:
    return HostedAIConnector(base_url=base_url, api_key=api_key, pool_id="standard-us-east")


def live_allocations(app: Any) -> int:
    return sum(1 for lease in app.state.sim.leases.values() if lease.view.status == "active")


PAIR = Pair(
    provider="hostedai",
    make_app=make_app,
    make_connector=make_connector,
    model="gemma-2b-it",
    ready_path="/api/v1/pools",  # 401 without a token, which says the app is up
    want=AllocationRequest(model="gemma-2b-it", min_vram_mb=2048, max_vram_mb=4096, min_tflops=5.0,
                           duration_s=300, tenant="acme", workload="contract"),
    live_allocations=live_allocations,
)
