"""What the Cloud TPU API does not say: prices and chip specs, plus the ``tpu`` pool options.

The API has no price endpoint, so prices come from this catalogue: public list prices in USD per
chip-hour (us-central regions, 2025), which a pool overrides with ``on_demand_usd_per_chip_hour`` /
``spot_usd_per_chip_hour`` when its region, discounts or commitments differ. Billing is per second
while a node is READY. Accelerator names count TensorCores for v4 (``v4-8`` = 4 chips) but chips
for v5e (``v5litepod-8`` = 8 chips).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["CATALOG", "AcceleratorInfo", "TpuOptions"]


class AcceleratorInfo(msgspec.Struct, frozen=True, kw_only=True):
    family: str
    chips: int
    hbm_mb_per_chip: int
    bf16_tflops_per_chip: float
    runtime_version: str  # a runtime image that boots this type
    on_demand_usd_per_chip_hour: float
    spot_usd_per_chip_hour: float


CATALOG: dict[str, AcceleratorInfo] = {
    "v4-8": AcceleratorInfo(family="v4", chips=4, hbm_mb_per_chip=32 * 1024, bf16_tflops_per_chip=275.0,
                            runtime_version="tpu-ubuntu2204-base", on_demand_usd_per_chip_hour=3.22,
                            spot_usd_per_chip_hour=1.45),
    "v5litepod-8": AcceleratorInfo(family="v5litepod", chips=8, hbm_mb_per_chip=16 * 1024,
                                   bf16_tflops_per_chip=197.0, runtime_version="v2-alpha-tpuv5-lite",
                                   on_demand_usd_per_chip_hour=1.20, spot_usd_per_chip_hour=0.42),
}

Positive = Annotated[float, msgspec.Meta(gt=0)]
Price = Annotated[float, msgspec.Meta(ge=0)]


class TpuOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    project: str
    zone: str  # e.g. "us-central2-b" (v4) or "us-west4-a" (v5e)
    base_url: str = "https://tpu.googleapis.com"
    api_key_env: str = "GOOGLE_OAUTH_ACCESS_TOKEN"  # an OAuth2 access token (cloud-platform scope)
    api_key_file: str | None = None
    accelerator_type: Literal["v4-8", "v5litepod-8"] = "v5litepod-8"
    runtime_version: str = ""  # "" = the catalogue's runtime for the type
    spot: bool = False  # the standing node is spot capacity, asked for through a queued resource
    on_demand_usd_per_chip_hour: Price | None = None  # None = the catalogue's list price
    spot_usd_per_chip_hour: Price | None = None
    # The model server on the node. Placeholders: {ip} (external, else internal), {port},
    # {zone}, {node_id}, {base_url}. The simulator serves it at "{base_url}/node/{zone}/{node_id}".
    endpoint: str = "http://{ip}:{port}"
    serve_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    external_ip: bool = True
    model_ids: dict[str, str] = {}  # our model name -> the id the server loads; default: the same
    labels: dict[str, str] = {}
    metadata: dict[str, str] = {}  # e.g. a startup-script that starts the model server
    node_prefix: str = "hs"
    # Timing (seconds).
    poll_interval_s: Positive = 5.0
    ready_timeout_s: Positive = 1800.0
    release_timeout_s: Positive = 300.0  # how long release waits for the delete Operation
    timeout_s: Positive = 30.0
    infer_timeout_s: Positive = 300.0
    capacity_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0  # quote 0 available after a refusal
    catalog_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0

    @property
    def info(self) -> AcceleratorInfo:
        return CATALOG[self.accelerator_type]

    def usd_per_hour(self, spot: bool) -> float:
        """The whole node's price per hour: chips x the per-chip-hour price (overridable)."""
        info = self.info
        per_chip = ((self.spot_usd_per_chip_hour if self.spot_usd_per_chip_hour is not None
                     else info.spot_usd_per_chip_hour) if spot
                    else (self.on_demand_usd_per_chip_hour if self.on_demand_usd_per_chip_hour is not None
                          else info.on_demand_usd_per_chip_hour))
        return round(per_chip * info.chips, 6)
