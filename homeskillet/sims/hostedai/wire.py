"""hosted.ai request and response bodies (``provider-apis.md`` §9), plus the one error type."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "AllocateRequest",
    "Allocation",
    "AllocationMetadata",
    "HostedAIError",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceUsage",
    "Metrics",
    "Pool",
    "Requirements",
    "TokenRequest",
    "TokenResponse",
]


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request bodies reject unknown fields: a typo such as ``min_vram_gb`` is a 422, not ignored."""


class Pool(_Request):
    id: str
    tier: str  # standard | premium | preemptible | dedicated (the project's tiers, see §7)
    region: str
    capacity: int  # vGPUs; one allocation holds one vGPU
    vram_mb: int  # per vGPU
    tflops: float
    price_per_hour: float  # USD
    preemptible: bool = False  # a preemptible pool sells only evictable allocations


class Requirements(_Request):
    min_tflops: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    min_vram_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_vram_mb: Annotated[int, msgspec.Meta(ge=1)] | None = None


class AllocationMetadata(_Request):
    tenant_id: str = "default"
    workload_id: str = ""


class TokenRequest(_Request):
    api_key: str


class TokenResponse(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str = "bearer"
    expires_in: int  # seconds


class AllocateRequest(_Request):
    pool_id: str
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    duration_seconds: Annotated[int, msgspec.Meta(ge=1, le=30 * 86_400)] = 3600
    preemptible: bool = False  # the client accepts eviction; allowed on any pool (§9's own example)
    metadata: AllocationMetadata = msgspec.field(default_factory=AllocationMetadata)


class InferenceRequest(_Request):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=32_768)] = 256
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7


class Allocation(msgspec.Struct, kw_only=True):
    id: str
    pool_id: str
    status: str  # active | released | preempted | expired
    vram_mb: int
    tflops: float
    preemptible: bool
    created_at: str  # ISO 8601, UTC
    expires_at: str
    price_per_hour: float
    metadata: AllocationMetadata
    billed_usd: float = 0.0  # set when the allocation ends


class InferenceUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class InferenceResponse(msgspec.Struct, kw_only=True):
    id: str
    allocation_id: str
    model: str
    text: str
    usage: InferenceUsage
    latency_ms: float


class Metrics(msgspec.Struct, kw_only=True):
    gpu_utilization: float  # busy time / lifetime, 0..1
    memory_used_mb: int
    inference_count: int
    average_latency_ms: float


class HostedAIError(Exception):
    """Raised anywhere in the simulator; rendered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
