"""io.net hardware catalogue, locations and the prepaid price formula.

Everything here is configurable through ``SimConfig.extra`` (decoded strictly into ``IonetKnobs``
so a misspelt knob is an error, not a silent default). Prices are USD per GPU-hour; io.net sells
whole prepaid hours, so a quote is ``rate * gpus * replicas * hours`` plus fees.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from homeskillet.sims.base import SimConfig

__all__ = ["Hardware", "IonetKnobs", "Location", "PriceBreakdown", "knobs_from", "quote"]


class Location(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    id: int
    iso2: str
    name: str


class Hardware(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    hardware_id: int
    hardware_name: str
    brand_name: str = "NVIDIA"
    vram_gb: int
    usd_per_gpu_hour: float
    location_ids: tuple[int, ...]
    max_gpus_per_container: int = 8
    gpus_per_location: int | None = None  # None: 8 * SimConfig.capacity GPUs in each location


DEFAULT_LOCATIONS = (
    Location(id=1, iso2="US", name="United States"),
    Location(id=2, iso2="DE", name="Germany"),
    Location(id=3, iso2="SG", name="Singapore"),
)

DEFAULT_HARDWARE = (
    Hardware(hardware_id=101, hardware_name="NVIDIA A100 80GB", vram_gb=80, usd_per_gpu_hour=1.29,
             location_ids=(1, 2)),
    Hardware(hardware_id=102, hardware_name="NVIDIA H100 80GB", vram_gb=80, usd_per_gpu_hour=2.19,
             location_ids=(1, 2, 3)),
    Hardware(hardware_id=103, hardware_name="NVIDIA RTX 4090", vram_gb=24, usd_per_gpu_hour=0.35,
             location_ids=(1, 3)),
)


class IonetKnobs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    locations: list[Location] = msgspec.field(default_factory=lambda: list(DEFAULT_LOCATIONS))
    hardware: list[Hardware] = msgspec.field(default_factory=lambda: list(DEFAULT_HARDWARE))
    # The fee names come from the VMaaS price response; the percentages are not published (unverified).
    ionet_fee_percent: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    currency_conversion_fee_percent: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    discount_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    ready_s: Annotated[float, msgspec.Meta(ge=0)] = 120.0  # image pull + health check on traffic_port
    max_duration_hours: Annotated[int, msgspec.Meta(ge=1)] = 24 * 365  # simulator bound, not io.net's


def knobs_from(config: SimConfig) -> IonetKnobs:
    try:
        knobs = msgspec.convert(config.extra, IonetKnobs)
    except msgspec.ValidationError as exc:
        raise ValueError(f"io.net simulator extra: {exc}") from exc
    known = {loc.id for loc in knobs.locations}
    for hw in knobs.hardware:
        if missing := set(hw.location_ids) - known:
            raise ValueError(f"io.net simulator extra: hardware {hw.hardware_id} uses unknown locations "
                             f"{sorted(missing)}")
    return knobs


class PriceBreakdown(msgspec.Struct, kw_only=True):
    """Field names of io.net's price response (VMaaS documents them; CaaS is assumed the same)."""

    replica_count: int
    gpus_per_unit: int
    available_replica_count: list[int]
    compute_cost: float
    discount: float
    ionet_fee: float
    ionet_fee_percent: float
    currency_conversion_fee: float
    currency_conversion_fee_percent: float
    total_cost_usdc: float


def quote(knobs: IonetKnobs, hw: Hardware, gpus: int, replicas: int, hours: int,
          available: list[int]) -> PriceBreakdown:
    """Prepaid total for ``hours``: compute, minus discount, plus io.net fee, plus conversion fee."""
    compute = hw.usd_per_gpu_hour * gpus * replicas * hours
    discount = compute * knobs.discount_percent / 100
    fee = (compute - discount) * knobs.ionet_fee_percent / 100
    conversion = (compute - discount + fee) * knobs.currency_conversion_fee_percent / 100
    return PriceBreakdown(
        replica_count=replicas,
        gpus_per_unit=gpus,
        available_replica_count=available,
        compute_cost=round(compute, 6),
        discount=round(discount, 6),
        ionet_fee=round(fee, 6),
        ionet_fee_percent=knobs.ionet_fee_percent,
        currency_conversion_fee=round(conversion, 6),
        currency_conversion_fee_percent=knobs.currency_conversion_fee_percent,
        total_cost_usdc=round(compute - discount + fee + conversion, 6),
    )
