"""Settings for one Homeskillet process, from defaults, a strict TOML file and the environment.

``pools`` lists the pools this process hosts (agent + strike workers). The defaults give the
embedded demo a small fleet: echo pools posing as hosted.ai's four tiers and a marketplace GPU,
plus real local MLX inference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from .strict import convert_strict, load_toml

__all__ = ["PoolSpec", "Settings", "default_pools", "load_settings"]


class PoolSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str  # "<provider>/<pool>", e.g. "echo/standard-us-east"
    provider: str  # the connector: echo, mlx, …
    pool_class: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    accelerator: str = "gpu"
    gpu_model: str = ""
    vram_mb: int = 0
    tflops: float = 0.0
    region: str = ""
    preemptible: bool = False
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    usd_per_hour: float = 0.0
    start_ms: float = 1.0  # what the agent predicts before its track record says otherwise
    ms_per_token: float = 0.05
    context_tokens: int = 0  # the served model's context window (prompt + completion); 0 = unknown
    capacity: int = 16  # strikes run at once
    queue_limit: int = 256  # strikes accepted beyond capacity, waiting for a slot
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # passed to the connector


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats: list[str] = msgspec.field(default_factory=list)  # empty: start an embedded server
    data_dir: str = ""  # embedded server's JetStream directory; "" = the user's state dir
    prefix: str = "hs"
    covenants_dir: str = ""
    pools: list[PoolSpec] = msgspec.field(default_factory=lambda: default_pools())
    bid_window_ms: int = 50  # how long a call for proposals collects bids
    quote_interval_ms: int = 500  # how often pool agents publish standing quotes
    quote_ttl_ms: int = 3000
    heartbeat_ms: int = 250  # a strike running longer says it is alive this often
    silence_ms: int = 1500  # a strike silent this long is taken as lost
    max_prompt_bytes: int = 1 << 20
    max_fragments: int = 16
    cache_embedder: str = "hashing"  # semantic cache embedding: "hashing" or "minilm" (the [embed] extra)
    cache_max_entries: int = 10_000


def default_pools(echo_delay_ms: float = 0.0) -> list[PoolSpec]:
    echo = {"delay_ms": echo_delay_ms}
    return [
        PoolSpec(name="echo/standard-us-east", provider="echo", pool_class="standard", vram_mb=24576,
                 tflops=82, gpu_model="L4", region="us-east", usd_per_mtok_in=0.10, usd_per_mtok_out=0.20,
                 start_ms=15, ms_per_token=0.5, options=echo),
        PoolSpec(name="echo/preemptible-us-east", provider="echo", pool_class="preemptible", vram_mb=16384,
                 tflops=30, gpu_model="T4", region="us-east", preemptible=True, usd_per_mtok_in=0.04,
                 usd_per_mtok_out=0.08, start_ms=25, ms_per_token=0.8, options=echo),
        PoolSpec(name="echo/premium-us-east", provider="echo", pool_class="premium", vram_mb=49152,
                 tflops=180, gpu_model="L40S", region="us-east", usd_per_mtok_in=0.50, usd_per_mtok_out=1.50,
                 start_ms=10, ms_per_token=0.3, options=echo),
        PoolSpec(name="echo/dedicated-us-east", provider="echo", pool_class="dedicated", vram_mb=81920,
                 tflops=990, gpu_model="H100 SXM", region="us-east", usd_per_hour=4.0, start_ms=5,
                 ms_per_token=0.2, options=echo),
        PoolSpec(name="echo/marketplace-h100", provider="echo", pool_class="marketplace", vram_mb=81920,
                 tflops=990, gpu_model="H100 SXM", region="us-west", usd_per_hour=2.2, start_ms=40,
                 ms_per_token=0.25, options=echo),
        PoolSpec(name="mlx/local", provider="mlx", pool_class="local", models=["hs-tiny"], accelerator="cpu",
                 vram_mb=0, tflops=0.5, region="local", start_ms=50, ms_per_token=8.0, capacity=1,
                 queue_limit=32),
    ]


def load_settings(path: str | Path | None = None) -> Settings:
    """Defaults, then the TOML file (strict), then HOMESKILLET_NATS_URL (comma-separated URLs)."""
    settings = Settings()
    if path:
        settings = convert_strict(load_toml(path), Settings, str(path))
    env = os.environ.get("HOMESKILLET_NATS_URL")
    if env and not settings.nats:
        settings = msgspec.structs.replace(settings, nats=[u.strip() for u in env.split(",") if u.strip()])
    return settings
