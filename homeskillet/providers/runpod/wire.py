"""RunPod's GraphQL wire, pure: the documents we send (values always travel as variables, never
spliced into a document), the answers as Structs, offers in our units, and the HTTP-200
``errors`` mapped onto our errors by message and extension code.

Units in: prices $/h **per GPU** (a pod costs price × gpuCount; bids are per GPU too),
``memoryInGb`` VRAM per GPU in GB. Units out: MB per GPU, USD per hour for the whole pod.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ...errors import HomeskilletError, NoCapacity, ProviderAuthError, ProviderError, RateLimited
from ..base import AllocationRequest, ProviderOffer

__all__ = [
    "DEPLOY_ON_DEMAND",
    "DEPLOY_SPOT",
    "MY_PODS",
    "POD",
    "PROVIDER",
    "QUOTE",
    "RUNPOD_URL",
    "TERMINATE",
    "Answer",
    "DeployInput",
    "GqlError",
    "OfferRef",
    "Pod",
    "deploy_input",
    "error_for",
    "is_gone",
    "offers_from",
    "parse_offer_id",
    "quote_variables",
]

PROVIDER = "runpod"
RUNPOD_URL = "https://api.runpod.io"
Cloud = Literal["SECURE", "COMMUNITY"]

_PRICE = "minimumBidPrice uninterruptablePrice stockStatus countryCode"
QUOTE = f"""query Quote($gpuTypes: GpuTypeFilter, $secure: GpuLowestPriceInput, $community: GpuLowestPriceInput) {{
  gpuTypes(input: $gpuTypes) {{
    id displayName memoryInGb maxGpuCount
    secure: lowestPrice(input: $secure) {{ {_PRICE} }}
    community: lowestPrice(input: $community) {{ {_PRICE} }}
  }}
}}"""
_POD_FIELDS = """id name desiredStatus costPerHr gpuCount lastStatusChange
    runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type }
              gpus { id gpuUtilPercent memoryUtilPercent } }
    machine { gpuDisplayName }"""
DEPLOY_ON_DEMAND = f"""mutation Deploy($input: PodFindAndDeployOnDemandInput!) {{
  podFindAndDeployOnDemand(input: $input) {{ {_POD_FIELDS} }}
}}"""
DEPLOY_SPOT = f"""mutation DeploySpot($input: PodRentInterruptableInput!) {{
  podRentInterruptable(input: $input) {{ {_POD_FIELDS} }}
}}"""
POD = f"""query Pod($input: PodFilter!) {{ pod(input: $input) {{ {_POD_FIELDS} }} }}"""
MY_PODS = "query MyPods { myself { pods { id name desiredStatus } } }"
TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"

# How RunPod words a stock-out (GraphQL and REST alike) and a losing bid.
_NO_STOCK = ("no longer any instances available", "not enough free gpus", "no instances available",
             "out of stock", "below the current minimum bid")
_AUTH_CODES = {"UNAUTHENTICATED", "FORBIDDEN", "UNAUTHORIZED"}


class LowestPrice(msgspec.Struct):
    minimumBidPrice: float | None = None
    uninterruptablePrice: float | None = None
    stockStatus: str | None = None
    countryCode: str | None = None


class GpuTypeRow(msgspec.Struct):
    id: str
    displayName: str = ""
    memoryInGb: float = 0.0
    maxGpuCount: int = 8
    secure: LowestPrice | None = None
    community: LowestPrice | None = None


class RuntimeGpu(msgspec.Struct):
    gpuUtilPercent: float | None = None
    memoryUtilPercent: float | None = None


class Runtime(msgspec.Struct):
    uptimeInSeconds: float | None = None
    gpus: list[RuntimeGpu] | None = None


class Machine(msgspec.Struct):
    gpuDisplayName: str | None = None


class Pod(msgspec.Struct):
    id: str
    name: str | None = None
    desiredStatus: str | None = None  # RUNNING | EXITED | TERMINATED
    costPerHr: float = 0.0
    gpuCount: int = 1
    lastStatusChange: str | None = None
    runtime: Runtime | None = None  # null until the container is up
    machine: Machine | None = None


class GqlError(msgspec.Struct):
    message: str = ""
    extensions: dict[str, Any] | None = None


class Answer(msgspec.Struct):
    """Every GraphQL answer: ``data`` (fields null where they failed) and ``errors``."""

    data: dict[str, msgspec.Raw] | None = None
    errors: list[GqlError] = []

    def field(self, name: str) -> msgspec.Raw | None:
        raw = (self.data or {}).get(name)
        return None if raw is None or bytes(raw) == b"null" else raw


class OfferRef(msgspec.Struct, frozen=True):
    gpu_type_id: str
    cloud: Cloud
    spot: bool


def quote_variables(want: AllocationRequest) -> dict[str, Any]:
    place: dict[str, Any] = {}
    region = want.region.strip()
    if region:  # a data center id ("EU-RO-1") or a country code ("US")
        place = {"countryCode": region} if len(region) == 2 else {"dataCenterId": region}
    return {"gpuTypes": {"id": want.gpu_model} if want.gpu_model else None,
            "secure": {"gpuCount": want.count, "secureCloud": True, **place},
            "community": {"gpuCount": want.count, "secureCloud": False, **place}}


def _offer_id(ref: OfferRef) -> str:
    return f"{ref.gpu_type_id}@{ref.cloud}{'/spot' if ref.spot else ''}"


def parse_offer_id(offer_id: str) -> OfferRef:
    gpu, sep, rest = offer_id.rpartition("@")
    cloud, spot = (rest[:-5], True) if rest.endswith("/spot") else (rest, False)
    if not sep or not gpu or cloud not in ("SECURE", "COMMUNITY"):
        raise ValueError(f"offer_id {offer_id!r} is not a RunPod offer id; use one from quote() "
                         "(\"<gpuTypeId>@SECURE\" or \"…@COMMUNITY\", with \"/spot\" for interruptible)")
    return OfferRef(gpu, "SECURE" if cloud == "SECURE" else "COMMUNITY", spot)


def offers_from(rows: list[GpuTypeRow], want: AllocationRequest, clouds: tuple[Cloud, ...]) -> list[ProviderOffer]:
    """One offer per GPU type and cloud in stock (``stockStatus`` not null), on demand and, when
    ``want.preemptible``, spot at the bid we would place; per-GPU prices times the GPU count."""
    out: list[ProviderOffer] = []
    for g in rows:
        vram = int(g.memoryInGb * 1024)
        if want.count > g.maxGpuCount or vram < want.min_vram_mb or (want.max_vram_mb and vram > want.max_vram_mb):
            continue
        for cloud in clouds:
            price = g.secure if cloud == "SECURE" else g.community
            if price is None or price.stockStatus is None:
                continue
            base = ProviderOffer(offer_id=_offer_id(OfferRef(g.id, cloud, False)), gpu_model=g.id,
                                 count=want.count, vram_mb=vram, region=price.countryCode or "")
            on_demand = price.uninterruptablePrice
            if on_demand is not None:
                out.append(msgspec.structs.replace(base, usd_per_hour=round(on_demand * want.count, 6)))
            floor = price.minimumBidPrice
            if want.preemptible and floor is not None:
                per_gpu = want.bid_usd_per_hour / want.count if want.bid_usd_per_hour else floor
                if per_gpu >= floor:
                    out.append(msgspec.structs.replace(base, offer_id=_offer_id(OfferRef(g.id, cloud, True)),
                                                       preemptible=True, usd_per_hour=round(per_gpu * want.count, 6)))
    ceiling = want.max_usd_per_hour
    out = [o for o in out if not ceiling or o.usd_per_hour <= ceiling]
    out.sort(key=lambda o: (o.usd_per_hour, o.offer_id))
    return out


class DeployInput(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """``PodFindAndDeployOnDemandInput``, or ``PodRentInterruptableInput`` with ``bid_per_gpu``.
    ``min_memory_in_gb`` is system RAM, not VRAM."""

    name: str
    image_name: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    container_disk_in_gb: int
    volume_in_gb: int
    ports: str  # "8000/http": reachable through RunPod's proxy
    docker_args: str
    min_vcpu_count: int
    min_memory_in_gb: int
    start_ssh: bool  # the model server is reached through the proxy; no sshd, no public IP needed
    support_public_ip: bool
    country_code: str | None = None
    data_center_id: str | None = None
    bid_per_gpu: float | None = None


def deploy_input(*, name: str, image: str, ref: OfferRef, count: int, region: str, container_disk_gb: int,
                 volume_gb: int, port: int, docker_args: str, min_vcpu: int, min_memory_gb: int,
                 bid_per_gpu: float | None) -> DeployInput:
    region = region.strip()
    return DeployInput(
        name=name, image_name=image, gpu_type_id=ref.gpu_type_id, gpu_count=count, cloud_type=ref.cloud,
        container_disk_in_gb=container_disk_gb, volume_in_gb=volume_gb, ports=f"{port}/http",
        docker_args=docker_args, min_vcpu_count=min_vcpu, min_memory_in_gb=min_memory_gb,
        start_ssh=False, support_public_ip=False, country_code=region if len(region) == 2 else None,
        data_center_id=region if region and len(region) != 2 else None, bid_per_gpu=bid_per_gpu,
    )


def is_gone(errors: list[GqlError]) -> bool:
    return any("not found" in e.message.lower() for e in errors)


def error_for(status: int, errors: list[GqlError], *, retry_after_s: float | None = None) -> HomeskilletError:
    """RunPod's refusal (HTTP 200 with ``errors``, or an HTTP error) as our error."""
    messages = "; ".join(e.message for e in errors if e.message) or f"HTTP {status}"
    codes = {str((e.extensions or {}).get("code", "")).upper() for e in errors}
    low = messages.lower()
    if status in (401, 403) or codes & _AUTH_CODES or "unauthorized" in low or "api key" in low:
        return ProviderAuthError(f"credential refused ({status}): {messages}; check the pool's api key",
                                 provider=PROVIDER, http_status=status)
    if status == 429 or "too many requests" in low or "rate limit" in low:
        return RateLimited(f"rate limited: {messages}", provider=PROVIDER, http_status=429,
                           retry_after_s=retry_after_s)
    if any(m in low for m in _NO_STOCK):
        return NoCapacity(messages, provider=PROVIDER, http_status=status)
    return ProviderError(f"HTTP {status}: {messages}" if status != 200 else messages, provider=PROVIDER,
                         http_status=status)
