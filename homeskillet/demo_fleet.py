"""The demo's fleet: provider simulators and an Ollama node served on this loop, and the pools that
reach them through the real connectors.

Each simulator is the same ASGI app ``homeskillet sim <provider>`` serves, here on a free loopback
port with uvicorn's ``Server.serve()`` as a task on the running loop (no threads, no network).
Configs are seeded and fast (``time_scale`` shrinks the modelled latencies) and fault-free, except
one deliberate fault: hosted.ai evicts every *preemptible* allocation mid-inference, so the demo
always shows a re-strike with the evicted part billed. The simulators accept their default key,
which the pools carry as an option; nothing prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from .config import PoolSpec
from .node import create_node_app
from .sims.base import FaultPlan, LatencyModel, SimConfig

__all__ = ["Fleet", "Leftovers", "serve_on_loop"]

_SEED = 7
_TIME_SCALE = 0.05  # modelled latencies run twenty times faster than real time
_NODE_MODEL = "gemma2:2b"  # what the Ollama node calls gemma-2b (served by the real local model, SmolLM2-135M)

# Vast.ai's market for the demo: a few asks, priced so the covenants choose between them.
_VAST_OFFERS: list[dict[str, Any]] = [
    {"id": 5_100_001, "gpu_name": "RTX 4090", "gpu_ram": 24564, "total_flops": 82.6, "dph_base": 0.45,
     "min_bid": 0.32, "geolocation": "Dallas, US", "public_ipaddr": "203.0.113.21", "reliability2": 0.99},
    {"id": 5_100_002, "gpu_name": "L40S", "gpu_ram": 46068, "total_flops": 91.6, "dph_base": 0.85,
     "min_bid": 0.55, "geolocation": "Montreal, CA", "public_ipaddr": "203.0.113.22", "reliability2": 0.99},
    {"id": 5_100_003, "gpu_name": "H100 SXM", "gpu_ram": 81559, "total_flops": 66.9, "dph_base": 2.35,
     "min_bid": 1.40, "geolocation": "San Jose, US", "public_ipaddr": "203.0.113.23", "reliability2": 0.98},
]


class _Server(uvicorn.Server):
    """Leaves signals to the process: the demo stops its servers itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_on_loop(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port as a task on this loop; yield its base URL.

    The socket is bound first (so the port is known and early connections wait in the backlog)
    and created as TCP so asyncio sets TCP_NODELAY (else ~40 ms delayed-ACK stalls per request)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():  # it failed to start: raise its error
                await task
                raise RuntimeError(f"uvicorn stopped before serving {app!r}")
            await asyncio.sleep(0.002)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def _sim_config(*, base_ms: float, per_token_ms: float, faults: FaultPlan | None = None,
                **extra: Any) -> SimConfig:
    return SimConfig(seed=_SEED, time_scale=_TIME_SCALE, faults=faults or FaultPlan(),
                     latency=LatencyModel(base_ms=base_ms, per_token_ms=per_token_ms, jitter_sigma=0.1),
                     extra=extra)


@dataclass
class Leftovers:
    """What one provider still holds for us once the demo stopped, and what it billed."""

    provider: str
    made: int  # allocations (hosted.ai) or instances (Vast.ai) over the run
    live: int  # still active / running at the provider: must be 0
    billed_usd: float
    detail: str = ""


@dataclass
class Fleet:
    """The simulators and node this demo runs, and the URLs they answer on."""

    urls: dict[str, str] = field(default_factory=dict)
    apps: dict[str, Any] = field(default_factory=dict)
    key: str = SimConfig().api_key  # the simulators' default credential, passed as a pool option

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[Fleet]:
        from .sims import hostedai, openrouter, vastai

        fleet = cls()
        fleet.apps = {
            # The one deliberate fault: preemptible allocations are evicted mid-inference (only those).
            "hostedai": hostedai.create_app(_sim_config(base_ms=120, per_token_ms=4,
                                                        faults=FaultPlan(preempt_rate=1.0)), clock=time.time),
            "vastai": vastai.create_app(_sim_config(base_ms=150, per_token_ms=5, offers=_VAST_OFFERS),
                                        clock=time.time),
            "openrouter": openrouter.create_app(_sim_config(base_ms=250, per_token_ms=6), clock=time.time),
            "ollama": create_node_app(models=[_NODE_MODEL], num_predict=32),
        }
        async with contextlib.AsyncExitStack() as stack:
            for name, app in fleet.apps.items():
                fleet.urls[name] = await stack.enter_async_context(serve_on_loop(app))
            yield fleet

    def pools(self) -> list[PoolSpec]:
        """One pool per kind of capacity, each through its real connector to the simulator above."""
        h, v, o, n = self.urls["hostedai"], self.urls["vastai"], self.urls["openrouter"], self.urls["ollama"]
        hosted = {"base_url": h, "api_key": self.key, "timeout_s": 10}
        vast = {"base_url": f"{v}/api/v0", "endpoint": "{origin}/instance/{id}", "api_key": self.key,
                "poll_s": 0.05, "ready_timeout_s": 10, "disk_gb": 40}
        gemma_mistral = ["gemma-2b", "mistral-7b"]
        return [
            PoolSpec(name="hostedai/standard-us-east", provider="hostedai", pool_class="standard",
                     models=gemma_mistral, vram_mb=16384, tflops=30, region="us-east",
                     usd_per_hour=0.80, start_ms=10, ms_per_token=0.3,
                     options=hosted | {"pool_id": "standard-us-east", "min_vram_mb": 2048}),
            PoolSpec(name="hostedai/preemptible-us-east", provider="hostedai", pool_class="preemptible",
                     models=gemma_mistral, vram_mb=16384, tflops=30, region="us-east",
                     preemptible=True, usd_per_hour=0.25, start_ms=10, ms_per_token=0.3,
                     options=hosted | {"pool_id": "preemptible-us-east", "preemptible": True}),
            PoolSpec(name="hostedai/premium-us-east", provider="hostedai", pool_class="premium",
                     models=["qwen-14b", "qwen-32b"], vram_mb=49152, tflops=80,
                     region="us-east", usd_per_hour=2.40, start_ms=10, ms_per_token=0.3,
                     options=hosted | {"pool_id": "premium-us-east", "min_vram_mb": 14336}),
            PoolSpec(name="hostedai/dedicated-us-east", provider="hostedai", pool_class="dedicated",
                     models=["qwen-70b"], vram_mb=81920, tflops=300, region="us-east",
                     usd_per_hour=4.50, start_ms=10, ms_per_token=0.3,
                     options=hosted | {"pool_id": "dedicated-us-east", "min_vram_mb": 81920}),
            PoolSpec(name="vastai/rtx4090-spot", provider="vastai", pool_class="preemptible", models=gemma_mistral,
                     gpu_model="RTX 4090", vram_mb=24564, tflops=82.6, region="US", preemptible=True,
                     usd_per_hour=0.35, start_ms=15, ms_per_token=0.3,
                     options=vast | {"model": "google/gemma-2-2b-it", "gpu_name": "RTX 4090",
                                     "min_vram_mb": 22000, "interruptible": True, "max_usd_per_hour": 0.6}),
            PoolSpec(name="vastai/l40s", provider="vastai", pool_class="marketplace", models=["qwen-14b", "qwen-32b"],
                     gpu_model="L40S", vram_mb=46068, tflops=91.6, region="CA", usd_per_hour=0.90, start_ms=15,
                     ms_per_token=0.3,
                     options=vast | {"model": "Qwen/Qwen2.5-32B-Instruct-AWQ", "gpu_name": "L40S",
                                     "max_usd_per_hour": 1.2}),
            PoolSpec(name="openrouter/qwen-2.5-72b", provider="openrouter", pool_class="api",
                     models=["qwen-70b"], accelerator="api", usd_per_mtok_in=0.12, usd_per_mtok_out=0.39,
                     start_ms=20, ms_per_token=0.3,
                     options={"base_url": f"{o}/api/v1", "api_key": self.key,
                              "model_map": {"qwen-70b": "qwen/qwen-2.5-72b-instruct"}, "timeout_s": 10}),
            # The node is this machine's real local model behind Ollama's API, standing in for a desk GPU box.
            PoolSpec(name="ollama/desk", provider="ollama", pool_class="local", models=["gemma-2b"],
                     gpu_model="RTX 3060", vram_mb=12288, tflops=12.7, region="local", start_ms=20,
                     ms_per_token=2.0, capacity=1, queue_limit=8,
                     options={"base_url": n, "name": "desk", "model_map": {"gemma-2b": _NODE_MODEL},
                              "keep_alive": "5m", "timeout_s": 30}),
            PoolSpec(name="mlx/local", provider="mlx", pool_class="local", models=["smollm2-135m", "smollm2-135m+*"],
                     accelerator="cpu", tflops=0.5, region="local", start_ms=400, ms_per_token=60.0,
                     context_tokens=8192, capacity=1, queue_limit=32),
        ]

    def leftovers(self) -> list[Leftovers]:
        """What the simulators still hold: every allocation and instance must be gone."""
        hosted = self.apps["hostedai"].state.sim
        statuses: dict[str, int] = {}
        for lease in hosted.leases.values():
            statuses[lease.view.status] = statuses.get(lease.view.status, 0) + 1
        vast = self.apps["vastai"].state.sim
        made = vast.counters.get("created", 0) + vast.counters.get("half_created", 0)
        router = self.apps["openrouter"].state.sim
        return [
            Leftovers("hosted.ai", len(hosted.leases), statuses.get("active", 0), sum(hosted.billed_usd.values()),
                      ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))),
            Leftovers("Vast.ai", made, len(vast.instances), vast.total_cost(),
                      f"{vast.counters.get('destroyed', 0)} destroyed"),
            Leftovers("OpenRouter", 0, 0, router.usage_usd, "billed per token; nothing to allocate"),
        ]
