"""Vast.ai: the connector against the Vast.ai simulator (its instances' model servers are served by
the same app under ``/instance/{id}``)."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import AllocationRequest, Connector
from homeskillet.providers.vastai import VastConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.vastai import create_app

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIM_ENDPOINT = "{origin}/instance/{id}"  # where the simulator serves a rented instance's vLLM


def connector(base_url: str, api_key: str, **options: Any) -> VastConnector:
    defaults: dict[str, Any] = {"model": MODEL, "min_vram_mb": 20_000, "endpoint": SIM_ENDPOINT, "poll_s": 0.01,
                                "ready_timeout_s": 10.0, "timeout_s": 5.0, "infer_timeout_s": 10.0}
    return VastConnector(base_url=base_url + "/api/v0", api_key=api_key, **{**defaults, **options})


def _make_connector(base_url: str, api_key: str) -> Connector:
    return connector(base_url, api_key)


def live(app: Any) -> int:
    return len(app.state.sim.instances)  # stopped ones too: they bill storage until destroyed


PAIR = Pair(
    provider="vastai",
    make_app=lambda: create_app(SimConfig(seed=7, time_scale=0)),
    make_connector=_make_connector,
    model=MODEL,
    ready_path="/_sim/state",
    want=AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=10.0),
    live_allocations=live,
)
