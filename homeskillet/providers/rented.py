"""What connectors that rent a box share (Vast.ai, RunPod): the provider's control plane with its
429s retried as told, quotes cached briefly so a pool agent may ask every few seconds, and
inference on the box's OpenAI-compatible server, with a dead box diagnosed by asking the provider
(preempted? gone?) and a standing allocation dropped when it dies.

A subclass implements ``_quote``, ``allocate``, ``release``, ``metrics`` and ``_diagnose``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from ..errors import BadRequest, HomeskilletError, Preempted, ProviderError, RateLimited
from ..secrets import Secret
from ..telemetry import get_logger
from .base import (
    Allocation,
    AllocationRequest,
    Connector,
    InferRequest,
    InferResult,
    ProviderOffer,
    StandingAllocation,
)
from .http import make_client, retry_after
from .openai_compat import EndpointDown, complete, stream_chat, timeout_for

__all__ = ["ControlPlane", "Diagnosis", "QuoteCache", "RentedConnector", "billed_seconds", "check_request",
           "endpoint_url", "preempted"]

log = get_logger("homeskillet.providers")


def billed_seconds(usd_per_hour: float, seconds: float) -> float:
    """What per-second billing (Vast.ai, RunPod) charges for ``seconds``: whole seconds, rounded up."""
    return usd_per_hour * max(1, math.ceil(seconds)) / 3600.0


def check_request(provider: str, want: AllocationRequest, *, allocating: bool = False) -> None:
    """Refuse a request that cannot mean anything, before any call to the provider."""
    problems = []
    if want.count < 1:
        problems.append(f"count must be at least 1, got {want.count}")
    if want.min_vram_mb < 0 or want.max_vram_mb < 0 or (want.max_vram_mb and want.max_vram_mb < want.min_vram_mb):
        problems.append(f"VRAM bounds {want.min_vram_mb}..{want.max_vram_mb} MB are not a range")
    if want.bid_usd_per_hour < 0 or want.max_usd_per_hour < 0:
        problems.append("prices cannot be negative")
    if want.bid_usd_per_hour and not want.preemptible:
        problems.append("bid_usd_per_hour is set but preemptible is false; set preemptible to rent interruptible")
    if want.max_usd_per_hour and want.bid_usd_per_hour > want.max_usd_per_hour:
        problems.append(f"the bid ${want.bid_usd_per_hour}/h is over the ceiling ${want.max_usd_per_hour}/h")
    if want.duration_s <= 0:
        problems.append(f"duration_s must be positive, got {want.duration_s}")
    if allocating and want.accelerator != "gpu":
        problems.append(f"{provider} rents GPUs; accelerator {want.accelerator!r} cannot be allocated here")
    if allocating and want.ready_timeout_s <= 0:
        problems.append(f"ready_timeout_s must be positive, got {want.ready_timeout_s}")
    if problems:
        raise BadRequest(f"{provider}: cannot serve this allocation request: " + "; ".join(problems))


def endpoint_url(template: str, base_url: str, **fields: Any) -> str:
    """Fill an endpoint template; ``{origin}`` is the control plane's scheme://host[:port]."""
    parts = urlsplit(base_url)
    try:
        return template.format(origin=f"{parts.scheme}://{parts.netloc}", **fields).rstrip("/")
    except (KeyError, IndexError, ValueError) as exc:
        raise BadRequest(f"endpoint template {template!r} is invalid ({exc!r}); use only the placeholders "
                         f"{{origin}}, {', '.join('{' + f + '}' for f in fields)}") from None


class ControlPlane:
    """The provider's API over one client: the credential goes in a header per request (never in
    the URL, never to a rented box); a 429 is retried after ``Retry-After`` (or a short backoff)
    while that fits ``max_wait_s``, then raised as ``RateLimited``."""

    def __init__(self, provider: str, base_url: str, key: Secret, client: httpx.AsyncClient, *,
                 describe: Callable[[httpx.Response], str], timeout_s: float = 30.0, retries: int = 3,
                 max_wait_s: float = 10.0, backoff_s: float = 0.5) -> None:
        self.provider, self.base_url, self.client = provider, base_url.rstrip("/"), client
        self._key = key  # revealed only into each request's header
        self.describe, self.timeout_s = describe, timeout_s
        self.retries, self.max_wait_s, self.backoff_s = retries, max_wait_s, backoff_s
        self.calls = 0  # requests sent (tests check that a cached quote sends none)

    async def send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """``body`` (Structs, or builtins holding them) goes out as JSON, encoded by msgspec."""
        content = msgspec.json.encode(body) if body is not None else None
        for attempt in range(self.retries + 1):
            self.calls += 1
            headers = {"Authorization": f"Bearer {self._key.reveal()}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            try:
                resp = await self.client.request(method, self.base_url + path, content=content, headers=headers,
                                                 timeout=self.timeout_s)
            except httpx.TimeoutException:
                raise ProviderError(f"{method} {path} got no answer within {self.timeout_s:g}s",
                                    provider=self.provider) from None
            except httpx.TransportError as exc:
                raise ProviderError(f"cannot reach {urlsplit(self.base_url).netloc}: {type(exc).__name__}",
                                    provider=self.provider) from None
            if resp.status_code != 429:
                return resp
            wait = retry_after(resp)
            if attempt == self.retries or (wait is not None and wait > self.max_wait_s):
                raise RateLimited(f"{self.describe(resp)} (after {attempt + 1} tries)", provider=self.provider,
                                  retry_after_s=wait)
            await asyncio.sleep(wait if wait is not None else self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")


class QuoteCache:
    """Quotes for the same request within ``ttl_s`` share one provider call (also one in flight)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, tuple[float, asyncio.Future[list[ProviderOffer]]]] = {}

    async def get(self, want: AllocationRequest,
                  make: Callable[[AllocationRequest], Awaitable[list[ProviderOffer]]]) -> list[ProviderOffer]:
        key, now = msgspec.json.encode(want), time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and (not hit[1].done() or now < hit[0]):
            return list(await asyncio.shield(hit[1]))
        self._entries = {k: v for k, v in self._entries.items() if not v[1].done() or now < v[0]}
        task: asyncio.Future[list[ProviderOffer]] = asyncio.ensure_future(make(want))
        self._entries[key] = (now + self.ttl_s, task)
        try:
            return list(await asyncio.shield(task))
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._entries.pop(key, None)  # failures are not cached
            raise


@dataclass
class Diagnosis:
    """Why a box stopped answering, as the provider tells it."""

    error: HomeskilletError
    dead: bool  # the allocation will not serve again: drop (and release) it


@dataclass
class _Stats:
    count: int = 0
    total_ms: float = 0.0


class RentedConnector(Connector):
    """Inference on rented boxes; see the module docstring for what a subclass provides."""

    def __init__(self, *, standing: AllocationRequest, client: httpx.AsyncClient | None,
                 infer_timeout_s: float, quote_ttl_s: float) -> None:
        self._own_client = client is None
        self.client = make_client("", client=client)
        self.infer_timeout_s = infer_timeout_s
        self.standing_request = standing
        self.standing = StandingAllocation(lambda: self.allocate(self.standing_request), self.release)
        self._quotes = QuoteCache(quote_ttl_s)
        self._stats: dict[str, _Stats] = {}
        self.active = 0  # strikes in flight on this connector

    async def _healthy(self, url: str, timeout_s: float) -> bool:
        """The box's model server answers ``/health`` with 200 (vLLM's readiness probe)."""
        try:
            resp = await self.client.get(f"{url}/health", timeout=timeout_s)
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        offers = await self._quotes.get(want, self._quote)
        held = self.standing.current
        # The box this pool already rents serves its strikes, so it is capacity too, even when the
        # provider has nothing else left to rent (its own offer is "rented" from then on).
        if (held is not None and want.accelerator == "gpu" and (not want.model or want.model == held.model)
                and (want.preemptible or not held.preemptible)):
            offers.append(ProviderOffer(
                offer_id=f"held:{held.allocation_id}", gpu_model=held.gpu_model, count=held.count,
                vram_mb=int(held.detail.get("vram_mb", 0)), region=held.region, usd_per_hour=held.usd_per_hour,
                preemptible=held.preemptible, available=1, warm_models=[held.model] if held.model else []))
        return offers

    async def _quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        raise NotImplementedError

    async def _diagnose(self, alloc: Allocation, detail: str, seconds: float) -> Diagnosis:
        raise NotImplementedError

    async def _target(self, req: InferRequest) -> Allocation:
        alloc = req.allocation if req.allocation is not None else await self.standing.get()
        if not alloc.endpoint:
            raise BadRequest(f"allocation {alloc.allocation_id} has no inference endpoint; "
                             f"allocate it with this {self.provider} connector")
        return alloc

    async def _failed(self, alloc: Allocation, req: InferRequest, down: EndpointDown,
                      t0: float) -> HomeskilletError:
        diag = await self._diagnose(alloc, down.detail, time.monotonic() - t0)
        if diag.dead and req.allocation is None:
            try:  # forget it, and destroy it: a stopped box still bills storage
                await self.standing.drop(alloc, release=True)
            except HomeskilletError as exc:
                log.warning("release_failed", provider=self.provider, allocation=alloc.allocation_id,
                            error=exc.message)
        return diag.error

    async def infer(self, req: InferRequest) -> InferResult:
        alloc = await self._target(req)
        t0 = time.monotonic()
        self.active += 1
        try:
            res = await complete(self.client, alloc.endpoint, req, provider=self.provider,
                                 timeout=timeout_for(req, self.infer_timeout_s))
        except EndpointDown as down:
            raise await self._failed(alloc, req, down, t0) from None
        finally:
            self.active -= 1
        stats = self._stats.setdefault(alloc.allocation_id, _Stats())
        stats.count += 1
        stats.total_ms += res.latency_ms
        return res

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        alloc = await self._target(req)
        t0 = time.monotonic()
        self.active += 1
        try:
            async for piece in stream_chat(self.client, alloc.endpoint, req, provider=self.provider,
                                           timeout=timeout_for(req, self.infer_timeout_s)):
                yield piece
        except EndpointDown as down:
            raise await self._failed(alloc, req, down, t0) from None
        finally:
            self.active -= 1

    def stats(self, allocation_id: str) -> tuple[int, float | None]:
        """Inferences served on an allocation and their mean latency (ms), as this connector saw them."""
        s = self._stats.get(allocation_id)
        return (s.count, s.total_ms / s.count) if s and s.count else (0, None)

    def forget(self, allocation_id: str) -> None:
        self._stats.pop(allocation_id, None)

    async def close(self) -> None:
        held = self.standing.current
        try:
            await self.standing.close()
        except HomeskilletError as exc:  # as the other connectors do: say what may still bill, stop anyway
            log.warning("standing_release_failed", provider=self.provider, error=exc.message,
                        allocation=held.allocation_id if held else None)
        finally:
            if self._own_client:
                await self.client.aclose()


def preempted(provider: str, what: str, usd_per_hour: float, seconds: float) -> Preempted:
    """Eviction mid-inference, billed per second at the allocation's rate for the evicted part."""
    billed = billed_seconds(usd_per_hour, seconds)
    return Preempted(f"{provider}: {what}; billed ${billed:.6f} for {seconds:.1f}s at ${usd_per_hour:.4f}/h",
                     billed_usd=billed)
