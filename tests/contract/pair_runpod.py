"""RunPod: the connector against the RunPod simulator (a pod's model server is served by the same
app under ``/proxy/{podId}-{port}``, as RunPod's HTTP proxy serves ``{podId}-{port}.proxy.runpod.net``)."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import AllocationRequest, Connector
from homeskillet.providers.runpod import RunPodConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.runpod import create_app

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIM_ENDPOINT = "{origin}/proxy/{id}-{port}"  # where the simulator's proxy serves a pod's vLLM


def connector(base_url: str, api_key: str, **options: Any) -> RunPodConnector:
    defaults: dict[str, Any] = {"model": MODEL, "min_vram_mb": 20_000, "endpoint": SIM_ENDPOINT, "poll_s": 0.01,
                                "ready_timeout_s": 10.0, "timeout_s": 5.0, "infer_timeout_s": 10.0}
    return RunPodConnector(base_url=base_url, api_key=api_key, **{**defaults, **options})


def _make_connector(base_url: str, api_key: str) -> Connector:
    return connector(base_url, api_key)


def live(app: Any) -> int:
    return len(app.state.sim.pods)  # EXITED ones too: their volume bills until terminated


PAIR = Pair(
    provider="runpod",
    make_app=lambda: create_app(SimConfig(seed=7, time_scale=0)),
    make_connector=_make_connector,
    model=MODEL,
    ready_path="/_sim/state",
    want=AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=10.0),
    live_allocations=live,
)
