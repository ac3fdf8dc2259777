"""The I/O half of the hosted.ai connector: token flow, pools, allocations, inference, release.

Behaviours worth knowing:

- ``quote`` costs one ``GET /api/v1/pools`` at most every ``quote_ttl_s`` (concurrent callers share
  it), so a pool host may call it every few seconds; during a Retry-After window it answers from
  the last listing with nothing available.
- A slow allocation (the POST blocks while hosted.ai readies the vGPU) that outlives
  ``ready_timeout_s`` has already been created and is billing: we re-send the same request under
  its ``Idempotency-Key`` to learn its id, then release it.
- An eviction mid-inference (410 ``preempted``) becomes ``Preempted`` billed per started second of
  that inference at the pool's hourly price (hosted.ai bills allocation time, not requests); the
  standing allocation is dropped and the next strike allocates afresh.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import httpx
import msgspec

from ...errors import HomeskilletError, NoCapacity, Preempted, ProviderError, RateLimited
from ...secrets import resolve_secret
from ...telemetry import get_logger
from ..base import (
    Allocation,
    AllocationMetrics,
    AllocationRequest,
    Connector,
    Health,
    InferRequest,
    InferResult,
    ProviderOffer,
    Release,
    StandingAllocation,
    register,
)
from ..cooldown import Cooldown
from ..http import make_client, retry_after
from .auth import TokenSource
from .wire import (
    PROVIDER,
    AllocationGone,
    AllocationView,
    InferenceBody,
    InferenceOut,
    MetricsOut,
    Pools,
    PoolView,
    TokenGrant,
    allocate_body,
    allocation_from,
    billed_for,
    error_code,
    error_for,
    metrics_from,
    misfit,
    offer_from,
    prompt_text,
)

__all__ = ["HostedAIConnector", "HostedAIOptions"]

log = get_logger("homeskillet.providers.hostedai")
T = TypeVar("T")


class HostedAIOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pool's ``options`` for ``provider = "hostedai"`` (the API key is kept out of this Struct)."""

    base_url: str  # hosted.ai publishes no public API host: give your region's, or a simulator's
    api_key_env: str = "HOSTEDAI_API_KEY"
    api_key_file: str | None = None
    pool_id: str = ""  # e.g. "premium-us-east"; "" = the cheapest pool that fits each allocation
    min_vram_mb: Annotated[int, msgspec.Meta(ge=0)] = 0  # what the standing allocation asks for
    max_vram_mb: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = no upper bound
    min_tflops: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    region: str = ""
    duration_s: Annotated[int, msgspec.Meta(ge=60, le=30 * 86_400)] = 3600  # standing allocation lifetime
    preemptible: bool | None = None  # accept eviction; None = only where the pool requires it
    tenant: str = "homeskillet"  # metadata.tenant_id of the standing allocation
    workload: str = ""  # metadata.workload_id; "" = "standing:<pool_id>"
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0  # per request, inference included
    quote_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    renew_before_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # re-allocate this long before expiry


class _TimedOut(ProviderError):
    pass


def _decode(raw: bytes, typ: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(raw, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(f"unexpected {what} from hosted.ai: {exc}", provider=PROVIDER) from None


@register("hostedai")
class HostedAIConnector(Connector):
    unsupported = {"bid": "hosted.ai sells vGPUs at a fixed price per pool; there is no market to bid in"}

    def __init__(self, *, api_key: str | None = None, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] | None = None, **options: Any) -> None:
        try:
            self.options = o = msgspec.convert(options, HostedAIOptions)
        except msgspec.ValidationError as exc:
            raise HomeskilletError(f"hostedai pool options: {exc}; see HostedAIOptions") from None
        if o.max_vram_mb and o.max_vram_mb < o.min_vram_mb:
            raise HomeskilletError("hostedai pool options: max_vram_mb is below min_vram_mb")
        self._key = resolve_secret("hostedai api_key", value=api_key, env=o.api_key_env, file=o.api_key_file)
        self._clock = clock or time.monotonic
        self._own_client = client is None
        self._http = make_client(o.base_url, {"accept": "application/json"},
                                 timeout=httpx.Timeout(o.timeout_s, connect=min(5.0, o.timeout_s)), client=client)
        self._tokens = TokenSource(self._fetch_token, clock=self._clock)
        self._cooldown = Cooldown(PROVIDER, self._clock)
        self._pools_cache: list[PoolView] | None = None
        self._pools_at = -1e18
        self._pools_lock = asyncio.Lock()
        self._standing = StandingAllocation(self._allocate_standing, self.release, renew_before_s=o.renew_before_s)
        self._warm: set[str] = set()  # models run on the standing allocation
        self._inflight = 0

    # -- HTTP ------------------------------------------------------------------------------------
    async def _http_call(self, method: str, path: str, body: Any, headers: dict[str, str],
                         timeout: float | None) -> httpx.Response:
        t = timeout if timeout is not None else self.options.timeout_s
        try:
            return await self._http.request(
                method, path, headers=headers, timeout=httpx.Timeout(t, connect=min(5.0, t)),
                content=None if body is None else msgspec.json.encode(body),
            )  # fmt: skip
        except httpx.TimeoutException as exc:
            raise _TimedOut(f"no answer within {t:g}s ({type(exc).__name__}); retry", provider=PROVIDER) from None
        except httpx.TransportError as exc:
            raise ProviderError(f"cannot reach {self.options.base_url}: {type(exc).__name__}",
                                provider=PROVIDER) from None

    def _ok(self, resp: httpx.Response) -> bytes:
        if resp.is_success:
            return resp.content
        err = error_for(resp.status_code, resp.content, retry_after(resp))
        if isinstance(err, RateLimited):
            self._cooldown.start(err.retry_after_s)
        raise err

    async def _fetch_token(self) -> TokenGrant:
        self._cooldown.check()
        assert self._key is not None
        resp = await self._http_call("POST", "/api/v1/auth/token", {"api_key": self._key.reveal()},
                                     {"content-type": "application/json"}, None)
        return _decode(self._ok(resp), TokenGrant, "token")

    async def _send(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                    headers: dict[str, str] | None = None) -> bytes:
        """One signed request; a token the provider calls expired or invalid is replaced once."""
        self._cooldown.check()
        hdrs = {"content-type": "application/json"} if body is not None else {}
        for attempt in range(2):
            token = await self._tokens.get()
            resp = await self._http_call(method, path, body, {**hdrs, **(headers or {}),
                                                               "authorization": f"Bearer {token}"}, timeout)
            if resp.status_code == 401 and attempt == 0 and error_code(resp.content)[0] in (
                    "token_expired", "invalid_token"):
                self._tokens.invalidate(token)
                continue
            return self._ok(resp)
        raise AssertionError("unreachable")

    # -- planning (cheap, no side effects) -----------------------------------------------------------
    def _cached(self) -> list[PoolView] | None:
        fresh = self._clock() - self._pools_at < self.options.quote_ttl_s
        return self._pools_cache if fresh else None

    async def _pools(self, *, fresh: bool = False) -> list[PoolView]:
        if not fresh and (cached := self._cached()) is not None:
            return cached
        async with self._pools_lock:  # concurrent quotes share one listing
            if not fresh and (cached := self._cached()) is not None:
                return cached
            pools = _decode(await self._send("GET", "/api/v1/pools"), Pools, "pool list").data
            self._pools_cache, self._pools_at = pools, self._clock()
            return pools

    async def _pool(self, pool_id: str) -> PoolView:
        for p in await self._pools():
            if p.id == pool_id:
                return p
        err = ProviderError(f"no pool {pool_id!r}; check the pool's pool_id option", provider=PROVIDER,
                            http_status=404)
        err.retryable = False
        raise err

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        limited = self._cooldown.remaining() > 0
        pools = self._pools_cache if limited and self._pools_cache is not None else await self._pools()
        if self.options.pool_id:
            pools = [p for p in pools if p.id == self.options.pool_id]
        standing = self._standing.current
        return [
            offer_from(p, warm=sorted(self._warm) if standing and standing.detail.get("pool_id") == p.id else [],
                       rate_limited=limited)
            for p in pools if misfit(p, want) is None
        ]  # fmt: skip

    # -- allocations -------------------------------------------------------------------------------
    async def allocate(self, want: AllocationRequest) -> Allocation:
        pool_id = want.offer_id or self.options.pool_id
        if pool_id:
            pool = await self._pool(pool_id)
            if why := misfit(pool, want):
                raise NoCapacity(why, provider=PROVIDER)
        else:
            fits = sorted((p for p in await self._pools() if misfit(p, want) is None and p.available > 0),
                          key=lambda p: p.price_per_hour)
            if not fits:
                raise NoCapacity("no hosted.ai pool fits the request with a free vGPU", provider=PROVIDER)
            pool = fits[0]
        body = allocate_body(want, pool.id, want.preemptible)
        key = uuid.uuid4().hex
        await self._tokens.get()  # so a timeout below is the create's, not the token's
        try:
            raw = await self._send("POST", "/api/v1/allocations", body, timeout=want.ready_timeout_s,
                                   headers={"idempotency-key": key})
        except _TimedOut:
            left = await self._abandon(body, key)
            raise ProviderError(f"allocation on pool {pool.id} was not ready within {want.ready_timeout_s:g}s; "
                                f"{left}", provider=PROVIDER) from None
        alloc = allocation_from(_decode(raw, AllocationView, "allocation"), now=time.time(), model=want.model)
        log.info("allocated", provider=PROVIDER, allocation=alloc.allocation_id, pool=pool.id,
                 usd_per_hour=alloc.usd_per_hour, preemptible=alloc.preemptible)
        return alloc

    async def _abandon(self, body: Any, key: str) -> str:
        """The allocation we gave up waiting for exists and bills: find it by its key, release it."""
        try:
            raw = await self._send("POST", "/api/v1/allocations", body, headers={"idempotency-key": key},
                                   timeout=min(5.0, self.options.timeout_s))
            view = _decode(raw, AllocationView, "allocation")
            rel = await self.release(allocation_from(view, now=time.time()))
        except HomeskilletError as exc:
            log.warning("allocation_maybe_left_behind", provider=PROVIDER, idempotency_key=key, error=exc.message)
            return f"it may be left behind, billing (idempotency key {key}): {exc.message}"
        return f"released the half-made allocation {view.id} (billed ${rel.billed_usd or 0:.6f})"

    async def _allocate_standing(self) -> Allocation:
        o = self.options
        preemptible = o.preemptible
        if preemptible is None:  # accept eviction only where the pool sells nothing else
            preemptible = (await self._pool(o.pool_id)).preemptible if o.pool_id else False
        self._warm.clear()
        return await self.allocate(AllocationRequest(
            offer_id=o.pool_id, min_vram_mb=o.min_vram_mb, max_vram_mb=o.max_vram_mb, min_tflops=o.min_tflops,
            region=o.region, duration_s=o.duration_s, preemptible=preemptible, tenant=o.tenant,
            workload=o.workload or f"standing:{o.pool_id or 'any'}", ready_timeout_s=o.timeout_s,
        ))  # fmt: skip

    async def release(self, allocation: Allocation) -> Release:
        current = self._standing.current
        if current is not None and current.allocation_id == allocation.allocation_id:
            self._standing.current = None
        try:
            raw = await self._send("DELETE", f"/api/v1/allocations/{allocation.allocation_id}")
        except ProviderError as exc:
            if exc.http_status != 404:
                raise
            return Release(allocation_id=allocation.allocation_id,
                           detail={"status": "unknown", "note": "hosted.ai no longer knows it (already released)"})
        view = _decode(raw, AllocationView, "allocation")
        log.info("released", provider=PROVIDER, allocation=view.id, status=view.status, billed_usd=view.billed_usd)
        return Release(allocation_id=view.id, billed_usd=view.billed_usd,
                       detail={"status": view.status, "pool_id": view.pool_id})

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        path = f"/api/v1/allocations/{allocation.allocation_id}"
        raw_view, raw_m = await asyncio.gather(self._send("GET", path), self._send("GET", path + "/metrics"))
        return metrics_from(allocation, _decode(raw_view, AllocationView, "allocation"),
                            _decode(raw_m, MetricsOut, "metrics"), now=time.time())

    # -- inference ---------------------------------------------------------------------------------
    def _timeout(self, req: InferRequest) -> float:
        t = self.options.timeout_s
        if req.deadline_ms:  # absolute epoch ms: never wait past the strike's deadline
            t = min(t, max(0.05, req.deadline_ms / 1000.0 - time.time()))
        return t

    async def infer(self, req: InferRequest) -> InferResult:
        standing = req.allocation is None
        body = InferenceBody(model=req.model, prompt=prompt_text(req.prompt, req.context), max_tokens=req.max_tokens,
                             temperature=req.temperature)
        for attempt in range(2):
            alloc = req.allocation or await self._standing.get()
            t0 = time.perf_counter()
            self._inflight += 1
            try:
                raw = await self._send("POST", f"/api/v1/inference/{alloc.allocation_id}", body,
                                       timeout=self._timeout(req))
            except ProviderError as exc:
                elapsed = time.perf_counter() - t0
                gone = isinstance(exc, AllocationGone) or exc.http_status == 404
                if gone and standing:  # evicted, expired or unknown: the next strike makes another
                    await self._standing.drop(alloc, release=False)
                    self._warm.clear()
                if isinstance(exc, AllocationGone) and exc.state == "preempted":
                    billed = billed_for(elapsed, alloc.usd_per_hour)
                    raise Preempted(f"hosted.ai evicted allocation {alloc.allocation_id} mid-inference after "
                                    f"{elapsed * 1000:.0f} ms; billed ${billed:.6f} for it",
                                    billed_usd=billed) from None
                if gone and standing and attempt == 0:
                    continue  # it ended before this inference ran: once more on a fresh allocation
                raise
            finally:
                self._inflight -= 1
            out = _decode(raw, InferenceOut, "inference result")
            if standing:
                self._warm.add(req.model)
            return InferResult(text=out.text, model=out.model or req.model, prompt_tokens=out.usage.prompt_tokens,
                               completion_tokens=out.usage.completion_tokens,
                               latency_ms=(time.perf_counter() - t0) * 1000.0)
        raise AssertionError("unreachable")

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        """§9 inference answers with the whole text, so the stream is that text in one piece."""
        yield (await self.infer(req)).text

    # -- health and shutdown -----------------------------------------------------------------------
    async def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            pools = await self._pools(fresh=True)
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000.0)
        mine = [p for p in pools if not self.options.pool_id or p.id == self.options.pool_id]
        if not mine:
            return Health(ok=False, detail=f"no pool {self.options.pool_id!r} at hosted.ai")
        cap = sum(p.capacity for p in mine)
        return Health(ok=True, detail=f"{sum(p.available for p in mine)}/{cap} vGPUs free",
                      latency_ms=(time.perf_counter() - t0) * 1000.0, warm_models=sorted(self._warm),
                      active=self._inflight, load=1.0 - sum(p.available for p in mine) / cap if cap else 1.0)

    async def close(self) -> None:
        try:
            await self._standing.close()
        except HomeskilletError as exc:  # still close the client; say what may be left behind
            log.warning("standing_release_failed", provider=PROVIDER, error=exc.message)
        finally:
            if self._own_client:
                await self._http.aclose()
