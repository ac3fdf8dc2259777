"""TPU accelerator types, zones, runtime versions and the price catalogue Google does not publish.

Accelerator names count TensorCores for v2–v4 and v5p (``v4-8`` = 4 chips) but chips for v5e and
v6e (``v5litepod-8`` = 8 chips). Topology strings are unverified (``provider-apis.md`` §4). Prices
are USD per chip-hour, approximate public list prices, and configurable: the TPU API has no price
endpoint, so the simulator serves this catalogue at the non-Google path ``GET /_sim/prices``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from homeskillet.sims.base import SimConfig

__all__ = ["ACCELERATORS", "AcceleratorSpec", "FamilyPrice", "TpuKnobs", "knobs_from", "spec_for_config"]


class AcceleratorSpec(msgspec.Struct, frozen=True):
    name: str  # acceleratorType, e.g. "v4-8"
    family: str  # price/capacity family, e.g. "v4"
    config_type: str  # acceleratorConfig.type, e.g. "V4"
    topology: str
    chips: int
    hosts: int  # one network endpoint per host; only single-host nodes can be stopped


def _specs() -> dict[str, AcceleratorSpec]:
    rows = [
        ("v2", "V2", [("v2-8", "2x2", 4, 1), ("v2-32", "4x4", 16, 4)]),
        ("v3", "V3", [("v3-8", "2x2", 4, 1), ("v3-32", "4x4", 16, 4)]),
        ("v4", "V4", [("v4-8", "2x2x1", 4, 1), ("v4-16", "2x2x2", 8, 2), ("v4-32", "2x2x4", 16, 4)]),
        ("v5litepod", "V5LITE_POD", [("v5litepod-1", "1x1", 1, 1), ("v5litepod-4", "2x2", 4, 1),
                                     ("v5litepod-8", "2x4", 8, 1), ("v5litepod-16", "4x4", 16, 4)]),
        ("v5p", "V5P", [("v5p-8", "2x2x1", 4, 1), ("v5p-16", "2x2x2", 8, 2)]),
        ("v6e", "V6E", [("v6e-1", "1x1", 1, 1), ("v6e-4", "2x2", 4, 1), ("v6e-8", "2x4", 8, 1),
                        ("v6e-16", "4x4", 16, 4)]),
    ]
    return {name: AcceleratorSpec(name, family, ctype, topo, chips, hosts)
            for family, ctype, sizes in rows for name, topo, chips, hosts in sizes}


ACCELERATORS = _specs()


def spec_for_config(config_type: str, topology: str) -> AcceleratorSpec | None:
    """``acceleratorConfig {type, topology}`` → the matching accelerator type, if any."""
    for spec in ACCELERATORS.values():
        if spec.config_type == config_type and spec.topology == topology:
            return spec
    return None


class FamilyPrice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    on_demand: Annotated[float, msgspec.Meta(ge=0)]  # USD per chip-hour
    spot: Annotated[float, msgspec.Meta(ge=0)]  # spot and preemptible


DEFAULT_PRICES = {
    "v2": FamilyPrice(on_demand=1.125, spot=0.3375),
    "v3": FamilyPrice(on_demand=2.00, spot=0.60),
    "v4": FamilyPrice(on_demand=3.22, spot=1.45),
    "v5litepod": FamilyPrice(on_demand=1.20, spot=0.42),
    "v5p": FamilyPrice(on_demand=4.20, spot=1.89),
    "v6e": FamilyPrice(on_demand=2.70, spot=0.95),
}

DEFAULT_ZONES = {
    "us-central1-b": ["v2", "v3"],
    "us-central2-b": ["v4"],
    "us-west4-a": ["v5litepod"],
    "europe-west4-a": ["v5litepod", "v6e"],
    "us-east5-a": ["v5p", "v6e"],
}

RUNTIME_VERSIONS = ("tpu-ubuntu2204-base", "tpu-vm-base", "tpu-vm-tf-2.16.1-pjrt", "tpu-vm-v4-pt-2.0",
                    "v2-alpha-tpuv5-lite", "v2-alpha-tpuv5", "v2-alpha-tpuv6e")


class TpuKnobs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    zones: dict[str, list[str]] = msgspec.field(default_factory=lambda: dict(DEFAULT_ZONES))
    chips_per_zone: Annotated[int, msgspec.Meta(ge=0)] | None = None  # per family; None: 4 * capacity
    zone_chips: dict[str, dict[str, int]] = {}  # overrides: zone -> family -> chips
    prices: dict[str, FamilyPrice] = msgspec.field(default_factory=lambda: dict(DEFAULT_PRICES))
    runtime_versions: list[str] = msgspec.field(default_factory=lambda: list(RUNTIME_VERSIONS))
    projects: list[str] | None = None  # None: any project; otherwise others get PERMISSION_DENIED
    create_s: Annotated[float, msgspec.Meta(ge=0)] = 90.0  # CREATING -> READY
    fail_s: Annotated[float, msgspec.Meta(ge=0)] = 15.0  # until a refused create reports its error
    op_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # stop, start, delete

    def chips(self, zone: str, family: str, capacity: int) -> int:
        per_zone = self.chips_per_zone if self.chips_per_zone is not None else 4 * capacity
        return self.zone_chips.get(zone, {}).get(family, per_zone)


def knobs_from(config: SimConfig) -> TpuKnobs:
    try:
        knobs = msgspec.convert(config.extra, TpuKnobs)
    except msgspec.ValidationError as exc:
        raise ValueError(f"TPU simulator extra: {exc}") from exc
    families = {spec.family for spec in ACCELERATORS.values()}
    for zone, offered in knobs.zones.items():
        if unknown := set(offered) - families:
            raise ValueError(f"TPU simulator extra: zone {zone} offers unknown families {sorted(unknown)}")
        if missing := set(offered) - set(knobs.prices):
            raise ValueError(f"TPU simulator extra: no price for {sorted(missing)}")
    return knobs
