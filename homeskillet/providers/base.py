"""One interface for every provider: a Connector is to a provider what an httpx transport is
to HTTP. Each connector declares what it can do, and for what it cannot, the reason, as data;
asking for an unsupported feature raises one error listing every reason.

Operations, all async: ``quote`` (what can be had now, at what price), ``allocate`` (turn an
offer into a running allocation, waiting for it to be ready), ``infer`` / ``stream`` (on an
allocation, or on the pool's standing allocation), ``release``, ``metrics``, ``health``.

Connectors that speak HTTP take ``base_url`` (so a simulator on a real port stands in for the
real service) and an optional injected ``httpx.AsyncClient``; credentials come through
``homeskillet.secrets`` and never appear in logs or errors.

A provider that bills by the allocation (hosted.ai, Vast.ai, RunPod, io.net, TPU) serves
strikes on a ``StandingAllocation``: allocated on first use, reused while it lives, dropped and
re-allocated after a preemption or expiry, released on ``close``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from ..errors import HomeskilletError
from ..wire import Message

__all__ = [
    "FEATURES",
    "Allocation",
    "AllocationMetrics",
    "AllocationRequest",
    "Connector",
    "Health",
    "InferRequest",
    "InferResult",
    "ProviderOffer",
    "Release",
    "StandingAllocation",
    "Unsupported",
    "connector_class",
    "register",
]

FEATURES = ("quote", "allocate", "infer", "stream", "release", "metrics", "health", "preemptible", "bid")


class Unsupported(HomeskilletError):
    code = "unsupported"
    status = 501


class ProviderOffer(msgspec.Struct, kw_only=True):
    """One thing a provider will rent or serve now, in our units (MB, USD per hour or per
    million tokens), whatever units the provider's API uses."""

    offer_id: str
    accelerator: str = "gpu"  # gpu | tpu | cpu | api
    gpu_model: str = ""
    count: int = 1  # accelerators (GPUs, TPU chips) in the unit
    vram_mb: int = 0  # per accelerator
    tflops: float = 0.0
    region: str = ""
    usd_per_hour: float = 0.0  # for the whole unit (count accelerators)
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    preemptible: bool = False
    available: int = 1  # units that can be had now
    models: list[str] = []  # models served (hosted APIs), or present on the node
    warm_models: list[str] = []  # loaded and ready without a cold start


class AllocationRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    gpu_model: str = ""  # "" = any that meets the minimums
    accelerator: str = "gpu"
    count: int = 1
    min_vram_mb: int = 0
    max_vram_mb: int = 0  # 0 = no upper bound
    min_tflops: float = 0.0
    region: str = ""
    duration_s: int = 3600
    preemptible: bool = False  # interruptible / spot / bid allowed
    bid_usd_per_hour: float = 0.0  # the bid for an interruptible rental; 0 = the market minimum
    max_usd_per_hour: float = 0.0  # 0 = no ceiling
    offer_id: str = ""  # from quote(); "" = the connector picks the cheapest that fits
    tenant: str = "default"
    workload: str = ""
    ready_timeout_s: float = 600.0


class Allocation(msgspec.Struct, kw_only=True):
    allocation_id: str
    provider: str
    status: str = "running"  # pending | running | preempted | released | failed
    endpoint: str = ""  # inference base URL when the provider gives one
    model: str = ""
    gpu_model: str = ""
    count: int = 1
    region: str = ""
    usd_per_hour: float = 0.0
    preemptible: bool = False
    created_at: float = 0.0  # unix seconds
    expires_at: float = 0.0  # 0 = until released
    detail: dict[str, Any] = {}  # provider-specific ids (instance id, operation name, …)


class AllocationMetrics(msgspec.Struct, kw_only=True):
    allocation_id: str
    status: str = "running"
    gpu_utilization: float | None = None  # 0..1
    memory_used_mb: float | None = None
    inference_count: int = 0
    average_latency_ms: float | None = None
    uptime_s: float = 0.0
    cost_usd: float | None = None  # accrued so far, when the provider says


class Release(msgspec.Struct, kw_only=True):
    allocation_id: str
    billed_usd: float | None = None  # the provider's bill for the whole allocation, when known
    detail: dict[str, Any] = {}


class Health(msgspec.Struct, kw_only=True):
    ok: bool
    detail: str = ""
    latency_ms: float = 0.0
    warm_models: list[str] = []
    active: int = 0  # requests in flight that we know of
    load: float = 0.0  # 0 = idle; higher is busier (provider-specific score)


class InferRequest(msgspec.Struct, kw_only=True):
    strike_id: str
    model: str
    prompt: str
    context: list[Message] = []
    max_tokens: int = 256
    temperature: float = 0.0
    deadline_ms: int = 0
    tenant: str = "default"
    allocation: Allocation | None = None  # None: the pool's standing allocation, if it needs one


class InferResult(msgspec.Struct, kw_only=True):
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    billed_usd: float | None = None  # what the provider says it charged, when it says
    logprob_mean: float | None = None  # mean token log-probability, when the provider returns logprobs


class Connector:
    provider: ClassVar[str] = ""
    # feature -> why not; every feature in FEATURES not listed here is supported.
    unsupported: ClassVar[dict[str, str]] = {}

    def supports(self, feature: str) -> bool:
        return feature not in self.unsupported

    def require(self, *features: str) -> None:
        reasons = [f"{f}: {self.unsupported[f]}" for f in features if f in self.unsupported]
        if reasons:
            raise Unsupported(f"{self.provider} cannot do what was asked: " + "; ".join(reasons))

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        self.require("quote")
        raise NotImplementedError

    async def allocate(self, want: AllocationRequest) -> Allocation:
        self.require("allocate")
        raise NotImplementedError

    async def infer(self, req: InferRequest) -> InferResult:
        self.require("infer")
        raise NotImplementedError

    def stream(self, req: InferRequest) -> AsyncIterator[str]:
        """Text pieces as the provider produces them."""
        self.require("stream")
        raise NotImplementedError

    async def release(self, allocation: Allocation) -> Release:
        self.require("release")
        raise NotImplementedError

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        self.require("metrics")
        raise NotImplementedError

    async def health(self) -> Health:
        return Health(ok=True)

    async def close(self) -> None:
        return None


class StandingAllocation:
    """The allocation a pool serves its strikes on: made on first use, shared by concurrent
    strikes, re-made after it is dropped (preempted, expired, failed), released on ``close``."""

    def __init__(self, allocate: Callable[[], Awaitable[Allocation]],
                 release: Callable[[Allocation], Awaitable[Release]], *, renew_before_s: float = 30.0) -> None:
        self._allocate, self._release = allocate, release
        self.renew_before_s = renew_before_s
        self.current: Allocation | None = None
        self.made = 0  # allocations made over this pool's life (tests and metrics read it)
        self._lock = asyncio.Lock()

    async def get(self) -> Allocation:
        alloc = self.current
        if alloc is not None and not self._expiring(alloc):
            return alloc
        async with self._lock:  # one allocation for many concurrent first strikes
            alloc = self.current
            if alloc is not None and self._expiring(alloc):
                await self.drop(alloc, release=True)
                alloc = None
            if alloc is None:
                alloc = self.current = await self._allocate()
                self.made += 1
            return alloc

    def _expiring(self, alloc: Allocation) -> bool:
        return bool(alloc.expires_at) and time.time() + self.renew_before_s >= alloc.expires_at

    async def drop(self, alloc: Allocation, *, release: bool) -> Release | None:
        """Forget ``alloc`` (if it is still current); release it at the provider when asked."""
        if self.current is not None and self.current.allocation_id == alloc.allocation_id:
            self.current = None
        return await self._release(alloc) if release else None

    async def close(self) -> Release | None:
        alloc, self.current = self.current, None
        return await self._release(alloc) if alloc is not None else None


_REGISTRY: dict[str, type[Connector]] = {}
C = TypeVar("C", bound=type[Connector])


def register(name: str) -> Callable[[C], C]:
    """Class decorator: register a connector under its provider name; duplicates are refused."""

    def deco(cls: C) -> C:
        if name in _REGISTRY:
            raise ValueError(f"a connector for {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.provider = name
        _REGISTRY[name] = cls
        return cls

    return deco


def connector_class(name: str) -> type[Connector]:
    if name not in _REGISTRY:
        import importlib

        try:
            importlib.import_module(f"homeskillet.providers.{name}")
        except ModuleNotFoundError:
            pass
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HomeskilletError(f"no connector for provider {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
