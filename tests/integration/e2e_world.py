"""What the provider end-to-end tests share: simulators served over real HTTP, pool specs that
point the real connectors at them, and small waits on the runtime's state (never sleeps).

Prices are chosen so each test's ranking and cost ceilings are decided by the numbers below:
hosted.ai's tiers keep the design's prices (standard $0.80/h, premium $2.40/h, preemptible
$0.25/h); the Vast.ai market is two offers whose hourly price is ``dph_base`` plus 40 GB of disk
at ``storage_cost`` $/GB/month.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from homeskillet.config import PoolSpec
from homeskillet.runtime import Runtime
from homeskillet.sims.base import FaultPlan, LatencyModel, SimConfig
from homeskillet.sims.hostedai import create_app as hostedai_app
from homeskillet.sims.vastai import create_app as vast_app
from homeskillet.testing import echo_pool, serve_asgi
from homeskillet.wire import Offer

MODEL = "gemma-2b"
VAST_DISK_GB = 40.0
HOURS_PER_MONTH = 720.0
# Two Vast.ai asks: a cheap RTX 4090 and an H100 that a tight cost ceiling cannot afford.
VAST_OFFERS: list[dict[str, Any]] = [
    {"id": 5_000_001, "gpu_name": "RTX 4090", "gpu_ram": 24564, "total_flops": 82.6, "dph_base": 0.40,
     "min_bid": 0.20, "storage_cost": 0.10, "geolocation": "Dallas, US"},
    {"id": 5_000_002, "gpu_name": "H100 SXM", "gpu_ram": 81559, "total_flops": 66.9, "dph_base": 2.50,
     "min_bid": 1.20, "storage_cost": 0.10, "geolocation": "San Jose, US"},
]


def vast_hourly(offer: dict[str, Any], price: float | None = None) -> float:
    """What the connector quotes for an ask: its price plus the disk we rent, per hour."""
    base = offer["dph_base"] if price is None else price
    return round(base + VAST_DISK_GB * offer["storage_cost"] / HOURS_PER_MONTH, 6)


def sim_config(*, seed: int = 11, capacity: int = 8, extra: dict[str, Any] | None = None,
               api_key: str = "sim-key", **faults: Any) -> SimConfig:
    # Real time (time_scale 1) with short modelled latencies: evictions land mid-inference and
    # lifetimes are billed on the wall clock, as the provider would.
    return SimConfig(seed=seed, time_scale=1.0, capacity=capacity, api_key=api_key, faults=FaultPlan(**faults),
                     latency=LatencyModel(base_ms=30.0, per_token_ms=1.0, jitter_sigma=0.0), extra=extra or {})


@contextmanager
def hostedai(config: SimConfig | None = None, clock: Callable[[], float] | None = None,
             ) -> Iterator[tuple[Any, str]]:
    """The hosted.ai simulator on a loopback port: (its state, ``HostedAISim``; its URL)."""
    app = hostedai_app(config or sim_config(), clock=clock)
    with serve_asgi(app, "/api/v1/pools") as url:  # 401 without a token: the app is up
        yield app.state.sim, url


@contextmanager
def vastai(config: SimConfig | None = None) -> Iterator[tuple[Any, str]]:
    """The Vast.ai simulator (its instances' vLLM servers included): (``VastState``, URL)."""
    app = vast_app(config or sim_config(extra={"offers": VAST_OFFERS}))
    with serve_asgi(app, "/_sim/state") as url:
        yield app.state.sim, url


def hostedai_pool(url: str, tier: str = "standard", *, pool_class: str | None = None, key: dict[str, str] | None = None,
                  **kw: Any) -> PoolSpec:
    """``hostedai/<tier>-us-east`` as in examples/pools-hostedai.toml, pointed at the simulator."""
    vram, tflops, price, pre = {"standard": (16384, 30.0, 0.80, False), "premium": (49152, 80.0, 2.40, False),
                                "preemptible": (16384, 30.0, 0.25, True)}[tier]
    options: dict[str, Any] = {"base_url": url, "pool_id": f"{tier}-us-east", "min_vram_mb": 2048, "timeout_s": 10.0,
                               **(key if key is not None else {"api_key": "sim-key"}), **kw.pop("options", {})}
    spec: dict[str, Any] = {"name": f"hostedai/{tier}-us-east", "provider": "hostedai",
                            "pool_class": pool_class or tier, "models": [MODEL], "vram_mb": vram, "tflops": tflops,
                            "region": "us-east", "preemptible": pre, "usd_per_hour": price, "start_ms": 1000.0,
                            "ms_per_token": 0.0, "options": options, **kw}
    return msgspec.convert(spec, PoolSpec)


def vast_pool(url: str, *, name: str = "vastai/rtx4090", gpu: str = "RTX 4090", pool_class: str = "marketplace",
              key: dict[str, str] | None = None, **kw: Any) -> PoolSpec:
    """An on-demand Vast.ai pool renting one ``gpu`` whose vLLM serves ``MODEL``."""
    offer = next(o for o in VAST_OFFERS if o["gpu_name"] == gpu)
    options: dict[str, Any] = {
        "base_url": url + "/api/v0", "endpoint": "{origin}/instance/{id}", "model": MODEL, "gpu_name": gpu,
        "disk_gb": VAST_DISK_GB, "poll_s": 0.02, "ready_timeout_s": 15.0, "timeout_s": 10.0, "infer_timeout_s": 10.0,
        "quote_ttl_s": 0.05, **(key if key is not None else {"api_key": "sim-key"}), **kw.pop("options", {})}
    spec: dict[str, Any] = {"name": name, "provider": "vastai", "pool_class": pool_class, "models": [MODEL],
                            "gpu_model": gpu, "vram_mb": offer["gpu_ram"], "tflops": offer["total_flops"],
                            "usd_per_hour": vast_hourly(offer), "start_ms": 1000.0, "ms_per_token": 0.0,
                            "options": options, **kw}
    return msgspec.convert(spec, PoolSpec)


def local_pool() -> PoolSpec:
    """The local step: a CPU pool that serves only the degraded model, at no cost."""
    return echo_pool("echo/local", "local", models=["smollm2-135m"], accelerator="cpu", vram_mb=0, tflops=0.5,
                     usd_per_mtok_in=0.0, usd_per_mtok_out=0.0, start_ms=5.0)


def book(rt: Runtime) -> dict[str, Offer]:
    """The broker's fresh standing quotes, by pool."""
    now = int(time.time() * 1000)
    return {q.offer.pool: q.offer for q in rt.negotiator.view.quotes if q.expires_at_ms >= now}


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll a cheap condition on the loop until it holds (the book and sims change on their own)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def active_leases(sim: Any, pool_id: str | None = None) -> list[Any]:
    """hosted.ai allocations still active (billing), optionally in one pool."""
    return [lease for lease in sim.leases.values()
            if lease.view.status == "active" and (pool_id is None or lease.view.pool_id == pool_id)]
