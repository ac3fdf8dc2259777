"""One interface for every provider: a Connector is to a provider what an httpx transport is
to HTTP. Each connector declares what it can do, and for what it cannot, the reason, as data;
asking for an unsupported feature raises one error listing every reason.

Operations, all async: ``quote`` (what can be had now, at what price), ``allocate`` (turn an
offer into a running allocation, waiting for it to be ready), ``infer`` / ``stream`` (on an
allocation, or on the pool's standing allocation), ``release``, ``metrics``, ``health``.
A streamed strike runs ``stream_result``: ``stream``'s pieces handed on as they come, then the
usage as an ``InferResult`` (estimated from the text unless the connector knows better and
overrides it); a connector that cannot stream answers with ``infer``'s whole text as one piece.

Connectors that speak HTTP take ``base_url`` (so a simulator on a real port stands in for the
real service) and an optional injected ``httpx.AsyncClient``; credentials come through
``homeskillet.secrets`` and never appear in logs or errors.

A provider that bills by the allocation (hosted.ai, Vast.ai, RunPod, io.net, TPU) serves
strikes on a ``StandingAllocation``: allocated on first use, reused while it lives, dropped and
re-allocated after a preemption or expiry, released on ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar, TypeVar

import msgspec

from ..errors import HomeskilletError
from ..sims.base import count_tokens
from ..wire import (
    Allocation,
    AllocationMetrics,
    AllocationRequest,
    Health,
    Message,
    ProviderOffer,
    Release,
)

__all__ = [
    "FEATURES",
    "Allocation",
    "AllocationMetrics",
    "AllocationRequest",
    "Connector",
    "Emit",
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


Emit = Callable[[str], Awaitable[None]]  # hands one streamed text piece on


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

    async def stream_result(self, req: InferRequest, emit: Emit) -> InferResult:
        """Stream ``req``: each piece of ``stream`` to ``emit`` as it comes, then the usage. Token
        counts are estimated from the text here; connectors whose provider reports usage override."""
        if not self.supports("stream"):
            res = await self.infer(req)
            if res.text:
                await emit(res.text)
            return res
        t0 = time.perf_counter()
        pieces: list[str] = []
        async with contextlib.aclosing(self.stream(req)) as stream:  # type: ignore[type-var]
            async for piece in stream:
                if piece:
                    pieces.append(piece)
                    await emit(piece)
        text = "".join(pieces)
        prompt = sum(count_tokens(m.content) for m in req.context) + count_tokens(req.prompt)
        return InferResult(text=text, model=req.model, prompt_tokens=prompt, completion_tokens=count_tokens(text),
                           latency_ms=(time.perf_counter() - t0) * 1000.0)

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
