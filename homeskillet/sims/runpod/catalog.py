"""RunPod's GPU types, data centers and seeded stock.

Prices are RunPod's list prices in $/h **per GPU** (a pod costs price × gpuCount); spot prices are
the per-GPU floor a ``bidPerGpu`` must reach. ``memoryInGb`` is VRAM per GPU. Secure Cloud stock
lives in data centers (``EU-RO-1``); Community Cloud is addressed by country code, so community
locations here carry ids too but clients normally filter them with ``countryCode``.
"""

from __future__ import annotations

import random

import msgspec

__all__ = ["DataCenter", "GpuType", "default_data_centers", "default_gpu_types", "default_stock"]


class GpuType(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # e.g. "NVIDIA GeForce RTX 4090"; what gpuTypeId/gpuTypeIds name
    display_name: str
    memory_gb: int  # VRAM per GPU
    max_gpu_count: int = 8
    secure_price: float
    community_price: float
    secure_spot_price: float
    community_spot_price: float
    secure_cloud: bool = True
    community_cloud: bool = True

    def price(self, secure: bool, spot: bool) -> float:
        if spot:
            return self.secure_spot_price if secure else self.community_spot_price
        return self.secure_price if secure else self.community_price

    def graphql(self) -> dict[str, object]:
        return {
            "id": self.id, "displayName": self.display_name, "memoryInGb": self.memory_gb,
            "maxGpuCount": self.max_gpu_count, "maxGpuCountSecureCloud": self.max_gpu_count,
            "maxGpuCountCommunityCloud": self.max_gpu_count, "secureCloud": self.secure_cloud,
            "communityCloud": self.community_cloud, "securePrice": self.secure_price,
            "communityPrice": self.community_price, "secureSpotPrice": self.secure_spot_price,
            "communitySpotPrice": self.community_spot_price,
            "oneMonthPrice": round(self.secure_price * 0.9, 2),
            "threeMonthPrice": round(self.secure_price * 0.85, 2),
            "sixMonthPrice": round(self.secure_price * 0.8, 2),
            "clusterPrice": None, "manufacturer": "Nvidia", "nodeGroupDatacenters": [],
        }


class DataCenter(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    country_code: str
    secure: bool  # Secure Cloud data center, else a Community Cloud location


def default_gpu_types() -> list[GpuType]:
    return [
        GpuType(id="NVIDIA GeForce RTX 4090", display_name="RTX 4090", memory_gb=24, secure_price=0.69,
                community_price=0.34, secure_spot_price=0.35, community_spot_price=0.20),
        GpuType(id="NVIDIA GeForce RTX 3090", display_name="RTX 3090", memory_gb=24, secure_price=0.43,
                community_price=0.22, secure_spot_price=0.22, community_spot_price=0.11),
        GpuType(id="NVIDIA A100 80GB PCIe", display_name="A100 PCIe", memory_gb=80, secure_price=1.64,
                community_price=1.19, secure_spot_price=0.82, community_spot_price=0.60),
        GpuType(id="NVIDIA H100 80GB HBM3", display_name="H100 SXM", memory_gb=80, secure_price=2.99,
                community_price=2.69, secure_spot_price=1.75, community_spot_price=1.40),
        GpuType(id="NVIDIA L40S", display_name="L40S", memory_gb=48, secure_price=0.86,
                community_price=0.79, secure_spot_price=0.43, community_spot_price=0.40),
        GpuType(id="NVIDIA RTX A6000", display_name="RTX A6000", memory_gb=48, secure_price=0.49,
                community_price=0.33, secure_spot_price=0.25, community_spot_price=0.17),
    ]


def default_data_centers() -> list[DataCenter]:
    return [
        DataCenter(id="EU-RO-1", name="Europe (Romania)", country_code="RO", secure=True),
        DataCenter(id="US-TX-3", name="US (Texas)", country_code="US", secure=True),
        DataCenter(id="CA-MTL-1", name="Canada (Montreal)", country_code="CA", secure=True),
        DataCenter(id="EU-SE-1", name="Europe (Sweden)", country_code="SE", secure=True),
        DataCenter(id="US-OR-1", name="US (Oregon)", country_code="US", secure=False),
        DataCenter(id="EU-CZ-1", name="Europe (Czechia)", country_code="CZ", secure=False),
        DataCenter(id="AP-JP-1", name="Asia (Japan)", country_code="JP", secure=False),
    ]


def default_stock(seed: int, gpus: list[GpuType], dcs: list[DataCenter]) -> dict[tuple[str, str], int]:
    """Free GPUs per (gpu type, data center); the same seed stocks the same shelves."""
    rng = random.Random(f"runpod-stock-{seed}")
    return {(g.id, dc.id): rng.choice((0, 0, 1, 2, 4, 8, 16)) for g in gpus for dc in dcs}
