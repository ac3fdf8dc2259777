"""The pure half of the hosted.ai connector: request bodies, response bodies, and their mapping
to our Structs and errors (``provider-apis.md`` §9). No I/O here, so it is tested on recorded
payloads.

Response Structs ignore fields they do not name, so a provider that adds fields breaks nothing;
request Structs carry only what §9 defines.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import msgspec

from ...errors import NoCapacity, ProviderAuthError, ProviderError, RateLimited
from ...wire import Message
from ..base import Allocation, AllocationMetrics, AllocationRequest, ProviderOffer

__all__ = [
    "PROVIDER",
    "AllocateBody",
    "AllocationGone",
    "AllocationView",
    "InferenceBody",
    "InferenceOut",
    "Metadata",
    "MetricsOut",
    "PoolView",
    "Pools",
    "Requirements",
    "TokenGrant",
    "allocate_body",
    "allocation_from",
    "billed_for",
    "error_code",
    "error_for",
    "metrics_from",
    "misfit",
    "offer_from",
    "prompt_text",
]

PROVIDER = "hostedai"
STATUS = {"active": "running", "preempted": "preempted", "released": "released", "expired": "released"}


# -- requests --------------------------------------------------------------------------------------
class Requirements(msgspec.Struct, kw_only=True, omit_defaults=True):
    min_tflops: float = 0.0
    min_vram_mb: int = 0
    max_vram_mb: int | None = None


class Metadata(msgspec.Struct, kw_only=True):
    tenant_id: str
    workload_id: str = ""


class AllocateBody(msgspec.Struct, kw_only=True):
    pool_id: str
    requirements: Requirements
    duration_seconds: int
    preemptible: bool
    metadata: Metadata


class InferenceBody(msgspec.Struct, kw_only=True):
    model: str
    prompt: str
    max_tokens: int
    temperature: float


# -- responses -------------------------------------------------------------------------------------
class TokenGrant(msgspec.Struct, kw_only=True):
    access_token: str
    expires_in: float  # seconds
    token_type: str = "bearer"


class PoolView(msgspec.Struct, kw_only=True):
    id: str
    region: str = ""
    tier: str = ""
    capacity: int = 0
    available: int = 0
    vram_mb: int = 0
    tflops: float = 0.0
    price_per_hour: float = 0.0  # USD for one vGPU
    preemptible: bool = False


class Pools(msgspec.Struct):
    data: list[PoolView]


class AllocationView(msgspec.Struct, kw_only=True):
    id: str
    pool_id: str
    status: str  # active | released | preempted | expired
    created_at: str  # ISO 8601
    expires_at: str
    price_per_hour: float
    vram_mb: int = 0
    tflops: float = 0.0
    preemptible: bool = False
    metadata: dict[str, Any] = {}
    billed_usd: float = 0.0  # set when the allocation ends


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = 0


class InferenceOut(msgspec.Struct, kw_only=True):
    id: str = ""
    model: str
    text: str
    usage: Usage
    latency_ms: float = 0.0


class MetricsOut(msgspec.Struct, kw_only=True):
    gpu_utilization: float | None = None
    memory_used_mb: float | None = None
    inference_count: int = 0
    average_latency_ms: float | None = None


class _ErrorDetail(msgspec.Struct):
    code: str = ""
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


# -- mapping ---------------------------------------------------------------------------------------
def misfit(pool: PoolView, want: AllocationRequest) -> str | None:
    """Why ``pool`` cannot serve ``want`` (None when it can); checked before any side effect."""
    if want.min_vram_mb > pool.vram_mb:
        return f"min_vram_mb {want.min_vram_mb} exceeds pool {pool.id}'s {pool.vram_mb} MB"
    if want.min_tflops > pool.tflops:
        return f"min_tflops {want.min_tflops:g} exceeds pool {pool.id}'s {pool.tflops:g}"
    if want.region and pool.region and want.region != pool.region:
        return f"pool {pool.id} is in {pool.region}, not {want.region}"
    if pool.preemptible and not want.preemptible:
        return f"pool {pool.id} sells only preemptible allocations and the request does not accept preemption"
    if want.max_usd_per_hour and pool.price_per_hour > want.max_usd_per_hour:
        return f"pool {pool.id} costs ${pool.price_per_hour:g}/h, above max_usd_per_hour ${want.max_usd_per_hour:g}"
    if want.gpu_model:
        return f"hosted.ai does not say which GPU backs a vGPU, so it cannot promise {want.gpu_model!r}"
    return None


def offer_from(pool: PoolView, *, warm: list[str], rate_limited: bool) -> ProviderOffer:
    """One vGPU of ``pool`` in our units (the API's are already MB and USD per hour)."""
    return ProviderOffer(
        offer_id=pool.id, accelerator="gpu", count=1, vram_mb=pool.vram_mb,
        tflops=pool.tflops, region=pool.region, usd_per_hour=pool.price_per_hour, preemptible=pool.preemptible,
        available=0 if rate_limited else max(0, pool.available), warm_models=warm,
    )  # fmt: skip


def allocate_body(want: AllocationRequest, pool_id: str, preemptible: bool) -> AllocateBody:
    return AllocateBody(
        pool_id=pool_id,
        requirements=Requirements(min_tflops=want.min_tflops, min_vram_mb=want.min_vram_mb,
                                  max_vram_mb=want.max_vram_mb or None),
        duration_seconds=max(1, int(want.duration_s)), preemptible=preemptible,
        metadata=Metadata(tenant_id=want.tenant, workload_id=want.workload),
    )  # fmt: skip


def _lifetime_s(view: AllocationView) -> float:
    """The allocation's duration as the provider states it; we count it from our own clock, since
    the provider's clock may disagree with ours."""
    try:
        return (datetime.fromisoformat(view.expires_at) - datetime.fromisoformat(view.created_at)).total_seconds()
    except ValueError:
        return 0.0


def allocation_from(view: AllocationView, *, now: float, model: str = "") -> Allocation:
    life = _lifetime_s(view)
    return Allocation(
        allocation_id=view.id, provider=PROVIDER, status=STATUS.get(view.status, "failed"), model=model,
        gpu_model="", count=1, region="", usd_per_hour=view.price_per_hour, preemptible=view.preemptible,
        created_at=now, expires_at=now + life if life > 0 else 0.0,
        detail={"pool_id": view.pool_id, "vram_mb": view.vram_mb, "tflops": view.tflops,
                "metadata": dict(view.metadata)},
    )  # fmt: skip


def billed_for(seconds: float, usd_per_hour: float) -> float:
    """hosted.ai's rule: every started second at the pool's hourly price."""
    return math.ceil(max(0.0, seconds)) * usd_per_hour / 3600.0


def metrics_from(alloc: Allocation, view: AllocationView, m: MetricsOut, *, now: float) -> AllocationMetrics:
    uptime = max(0.0, now - alloc.created_at)
    ended = view.status != "active"
    return AllocationMetrics(
        allocation_id=alloc.allocation_id, status=STATUS.get(view.status, "failed"),
        gpu_utilization=m.gpu_utilization, memory_used_mb=m.memory_used_mb, inference_count=m.inference_count,
        average_latency_ms=m.average_latency_ms, uptime_s=uptime,
        cost_usd=view.billed_usd if ended else billed_for(uptime, view.price_per_hour),
    )  # fmt: skip


def prompt_text(prompt: str, context: list[Message]) -> str:
    """§9 inference takes one prompt string: earlier turns go first, one ``role: content`` line each."""
    return "\n".join([*(f"{m.role}: {m.content}" for m in context), prompt])


class AllocationGone(ProviderError):
    """410: the allocation is no longer active (``state``: preempted, expired, released)."""

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message, provider=PROVIDER, http_status=410)
        self.state = state


def error_code(body: bytes) -> tuple[str, str]:
    """(code, message) from the ``{"error": {"code", "message"}}`` envelope, or from the raw body."""
    try:
        e = msgspec.json.decode(body, type=_ErrorBody).error
        return e.code, e.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", body[:200].decode("utf-8", "replace").strip()


def error_for(status: int, body: bytes, retry_after_s: float | None) -> ProviderError:
    """The one place hosted.ai's errors become ours."""
    code, message = error_code(body)
    text = f"{code}: {message}" if code else (message or f"HTTP {status}")
    if status in (401, 403):
        return ProviderAuthError(f"credential refused ({status} {text}); check the pool's api_key",
                                 provider=PROVIDER, http_status=status)
    if status == 429:
        return RateLimited(f"rate limited: {text}", provider=PROVIDER, retry_after_s=retry_after_s)
    if status == 409 or code == "insufficient_capacity":
        return NoCapacity(f"no capacity: {text}", provider=PROVIDER, http_status=status)
    if code == "unsatisfiable_requirements":  # this pool can never fit the request: another may
        return NoCapacity(f"the pool cannot meet the request: {message}", provider=PROVIDER, http_status=status)
    if status == 410:
        return AllocationGone(f"allocation gone: {text}", state=code or "gone")
    if status == 404 and code == "pool_not_found":
        err = ProviderError(f"{text}; check the pool's pool_id option", provider=PROVIDER, http_status=status)
        err.retryable = False  # a configuration error: retrying this pool cannot help
        return err
    if status in (408, 504):
        return ProviderError(f"timed out at the provider ({text}); retry", provider=PROVIDER, http_status=status)
    return ProviderError(f"HTTP {status} {text}", provider=PROVIDER, http_status=status)
