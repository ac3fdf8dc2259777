"""The io.net connector: prepaid CaaS deployments running an OpenAI-compatible server.

quote
    ``GET …/vmaas/hardware`` (the hardware catalogue, cached ``catalog_ttl_s``), then per matching
    hardware ``GET …/caas/available-replicas`` (live, cached ``quote_ttl_s``) and ``GET …/caas/price``
    (cached): one offer per location, in USD per hour for the whole container (prepaid total over
    hours, fees included). Cheap enough to call every few seconds.
allocate
    ``POST …/caas/deploy`` for whole prepaid hours, poll ``GET …/deployment/{id}`` until running,
    then read the container's ``public_url``. Anything that goes wrong after the deploy was sent
    (a 5xx or timeout that may have half-created it, a failed start, slow readiness, cancellation)
    destroys what was created, found by its unique ``resource_private_name``.
release
    ``DELETE …/deployment/{id}``; ``Release.billed_usd`` follows io.net's rule: the first hour is
    never refunded, the rest pro rata.
extend
    ``POST …/deployment/{id}/extend``; the standing deployment is extended near expiry.

io.net sells no spot capacity, so nothing is preempted by a market; a deployment that ends under a
strike (its prepaid time ran out, or it was destroyed) is reported as ``Preempted`` with the strike's
share of the prepaid time, since io.net bills nothing more for it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Any

import httpx
import msgspec
from async_lru import alru_cache

from ...errors import HomeskilletError, Preempted, ProviderAuthError, ProviderError, RateLimited
from ...secrets import resolve_secret
from ...telemetry import get_logger
from ..base import (
    Allocation,
    AllocationMetrics,
    AllocationRequest,
    Connector,
    Health,
    InferRequest,
    ProviderOffer,
    Release,
    StandingAllocation,
    register,
)
from ..http import make_client, retry_after
from . import api
from .chat import BoxStats, ChatOnBox
from .options import IonetOptions, parse_options, take_secret

__all__ = ["IonetConnector"]

log = get_logger("homeskillet.providers.ionet")


class _Hardware(msgspec.Struct, frozen=True):
    hardware_id: int
    name: str
    vram_gb: int


def slug(text: str, size: int = 24) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, out.split("-")))[:size] or "model"


@register("ionet")
class IonetConnector(ChatOnBox, Connector):
    unsupported = {
        "preemptible": "io.net sells prepaid deployments only; there is no spot or interruptible capacity",
        "bid": "io.net has fixed prepaid prices; there is no bidding",
    }

    def __init__(self, *, client: httpx.AsyncClient | None = None, **options: Any) -> None:
        rest, self._key = take_secret(options, "io.net API key", "IONET_API_KEY")
        self.opts = parse_options(IonetOptions, rest, "ionet")
        self._owns_client = client is None
        self._client = make_client(self.opts.base_url, timeout=self.opts.timeout_s, client=client)
        self._standing: dict[str, StandingAllocation] = {}
        self._stats: dict[str, BoxStats] = {}
        self._active = 0
        ttl_catalog, ttl_live = self.opts.catalog_ttl_s or None, self.opts.quote_ttl_s or None
        self._hardware = alru_cache(maxsize=1, ttl=ttl_catalog)(self._fetch_hardware)
        self._price = alru_cache(maxsize=256, ttl=ttl_catalog)(self._fetch_price)
        self._replicas = alru_cache(maxsize=64, ttl=ttl_live)(self._fetch_replicas)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                    json: Any = None) -> bytes:
        """One io.net API call with the key in its header (never in the URL); errors mapped."""
        try:
            resp = await self._client.request(method, path, params=params, json=json,
                                              headers={"x-api-key": self._key.reveal()},
                                              timeout=self.opts.timeout_s)
        except httpx.TimeoutException:
            raise ProviderError(f"{method} {path} did not answer within {self.opts.timeout_s:g}s",
                                provider="ionet") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"cannot reach io.net ({type(exc).__name__})", provider="ionet") from None
        if resp.status_code >= 400:
            api.raise_ionet(resp.status_code, resp.content, retry_after_s=retry_after(resp))
        return resp.content

    async def _fetch_hardware(self) -> tuple[_Hardware, ...]:
        rows: list[api.HardwareRow] = api.decode(await self._call("GET", f"{api.VMAAS}/hardware"),
                                                 dict[str, list[api.HardwareRow]])["hardware"]
        seen: dict[int, _Hardware] = {}
        for row in rows:
            seen.setdefault(row.deploy_id, _Hardware(row.deploy_id, row.name, row.vram_per_card))
        return tuple(seen.values())

    async def _fetch_replicas(self, hardware_id: int, gpus: int) -> tuple[api.ReplicaRow, ...]:
        raw = await self._call("GET", f"{api.CAAS}/available-replicas",
                               params={"hardware_id": hardware_id, "hardware_qty": gpus})
        return tuple(api.decode(raw, list[api.ReplicaRow]))

    async def _fetch_price(self, hardware_id: int, location_ids: tuple[int, ...], gpus: int,
                           hours: int) -> api.PriceData:
        params = {"location_ids": msgspec.json.encode(list(location_ids)).decode(), "hardware_id": hardware_id,
                  "duration_hours": hours, "gpus_per_container": gpus, "replica_count": 1}
        data: api.PriceData = api.decode(await self._call("GET", f"{api.CAAS}/price", params=params), api.PriceData)
        return data

    async def _details(self, deployment_id: str) -> api.Deployment:
        data: api.Deployment = api.decode(await self._call("GET", f"{api.CAAS}/deployment/{deployment_id}"),
                                          api.Deployment)
        return data

    # -- quote -----------------------------------------------------------------------------------

    def _hours(self, want: AllocationRequest) -> int:
        return max(1, math.ceil(want.duration_s / 3600)) if want.duration_s > 0 else self.opts.duration_hours

    def _fits(self, hw: _Hardware, want: AllocationRequest) -> bool:
        o = self.opts
        name = hw.name.lower()
        vram_mb = hw.vram_gb * 1024
        return ((o.hardware_id is None or hw.hardware_id == o.hardware_id)
                and o.gpu_model.lower() in name and want.gpu_model.lower() in name
                and vram_mb >= want.min_vram_mb and (not want.max_vram_mb or vram_mb <= want.max_vram_mb)
                and (o.tflops >= want.min_tflops or not want.min_tflops))

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        """Offers for ``want`` from live availability; cached so polling it every few seconds is cheap."""
        if want.accelerator not in ("gpu", "any"):
            return []
        gpus, hours = max(want.count, self.opts.gpus_per_container), self._hours(want)
        matching = [hw for hw in await self._hardware() if self._fits(hw, want)]
        per_hw = await asyncio.gather(*(self._offers(hw, gpus, hours, want) for hw in matching))
        return [offer for offers in per_hw for offer in offers]

    async def _offers(self, hw: _Hardware, gpus: int, hours: int, want: AllocationRequest) -> list[ProviderOffer]:
        region = want.region.lower()
        rows = [r for r in await self._replicas(hw.hardware_id, gpus)
                if (not self.opts.location_ids or r.id in self.opts.location_ids)
                and (not region or region in (r.iso2.lower(), r.name.lower()))]
        if not rows:
            return []
        price = await self._price(hw.hardware_id, tuple(sorted(r.id for r in rows)), gpus, hours)
        held: dict[int, list[str]] = {}  # location -> models of this pool's live deployments there
        for model, standing in self._standing.items():
            alloc = standing.current
            if alloc is not None and alloc.detail.get("hardware_id") == hw.hardware_id:
                held.setdefault(int(alloc.detail.get("location_id", 0)), []).append(model)
        # A deployment this pool already holds serves strikes too, so it counts as available
        # even when io.net has no replica left to rent there.
        return [ProviderOffer(offer_id=f"{hw.hardware_id}:{gpus}:{r.id}", accelerator="gpu", gpu_model=hw.name,
                              count=gpus, vram_mb=hw.vram_gb * 1024, tflops=self.opts.tflops, region=r.iso2,
                              usd_per_hour=round(price.total_cost_usdc / hours, 6),
                              available=r.available_replicas + len(held.get(r.id, [])),
                              warm_models=sorted(held.get(r.id, [])))
                for r in rows]

    # -- allocate --------------------------------------------------------------------------------

    async def _choose(self, want: AllocationRequest) -> ProviderOffer:
        self._replicas.cache_clear()  # renting decides on fresh availability, not a cached quote
        offers = await self.quote(want)
        ceiling = want.max_usd_per_hour or self.opts.max_usd_per_hour
        if want.offer_id:
            chosen = [o for o in offers if o.offer_id == want.offer_id and o.available > 0]
            if not chosen:
                raise api.no_capacity(f"offer {want.offer_id} is no longer available; quote again")
            return chosen[0]
        fitting = [o for o in offers if o.available > 0 and (not ceiling or o.usd_per_hour <= ceiling)]
        if not fitting:
            cheapest = min((o.usd_per_hour for o in offers if o.available > 0), default=None)
            why = (f"the cheapest is ${cheapest:.2f}/h, above the ceiling ${ceiling:.2f}/h" if cheapest is not None
                   else f"{len(offers)} matching offers, none with a free replica")
            raise api.no_capacity(f"no io.net hardware fits ({want.gpu_model or self.opts.gpu_model or 'any GPU'}, "
                                  f"{max(1, want.count)} GPU(s), {want.min_vram_mb} MB+): {why}")
        return min(fitting, key=lambda o: o.usd_per_hour)

    def _model_id(self, model: str) -> str:
        return self.opts.model_ids.get(model, model)

    def _deploy_body(self, name: str, offer: ProviderOffer, hours: int, model: str) -> dict[str, Any]:
        hardware_id, gpus, location = (int(p) for p in offer.offer_id.split(":"))
        secret_env = {}
        for var, env in self.opts.secret_env.items():
            value = resolve_secret(f"io.net container secret {var}", env=env)
            assert value is not None
            secret_env[var] = value.reveal()
        return {"resource_private_name": name, "duration_hours": hours, "gpus_per_container": gpus,
                "hardware_id": hardware_id, "location_ids": [location], "replica_count": 1,
                "image_url": self.opts.image_url, "traffic_port": self.opts.traffic_port,
                "args": ["--model", self._model_id(model), *self.opts.args],
                "env_variables": self.opts.env_variables or None, "secret_env_variables": secret_env or None}

    async def allocate(self, want: AllocationRequest) -> Allocation:
        if want.count < 1 or want.ready_timeout_s <= 0:
            raise HomeskilletError("io.net allocation: count must be at least 1 and ready_timeout_s positive")
        if not want.model:
            raise HomeskilletError("io.net allocation: name the model the container should serve")
        offer = await self._choose(want)
        hours = self._hours(want)
        name = f"hs-{slug(want.model)}-{secrets.token_hex(4)}"
        body = self._deploy_body(name, offer, hours, want.model)
        deadline = time.monotonic() + want.ready_timeout_s
        try:
            raw = await self._call("POST", f"{api.CAAS}/deploy", json=body)
        except (ProviderAuthError, RateLimited):
            raise  # refused before anything was created
        except ProviderError as exc:
            if exc.http_status and exc.http_status < 500:
                raise  # a 4xx (no capacity, bad value) creates nothing
            # A 5xx or a timeout may have half-created (and charged) a deployment: destroy it.
            billed = await asyncio.shield(self._destroy_by_name(name, hours))
            if billed is None:
                raise
            raise ProviderError(f"{exc.message.removeprefix('ionet: ')}; the half-created deployment {name} was "
                                f"destroyed (io.net keeps ${billed:.2f}: the first hour is not refunded)",
                                provider="ionet", http_status=exc.http_status) from None
        finally:
            self._replicas.cache_clear()
        dep_id = api.decode(raw, api.DeployAnswer, wrapped=False).deployment_id
        try:
            details, url = await self._wait_running(dep_id, deadline, want.ready_timeout_s)
        except BaseException as exc:
            billed = await asyncio.shield(self._destroy_quietly(dep_id, hours))
            if isinstance(exc, ProviderError) and not isinstance(exc, ProviderAuthError) and billed is not None:
                raise ProviderError(f"{exc.message.removeprefix('ionet: ')}; deployment {dep_id} was destroyed "
                                    f"(io.net keeps ${billed:.2f}: the first hour is not refunded)",
                                    provider="ionet", http_status=exc.http_status) from None
            raise
        now = time.time()
        log.info("ionet_allocated", deployment_id=dep_id, hardware=offer.gpu_model, region=offer.region,
                 hours=hours, prepaid_usd=details.amount_paid)
        return Allocation(
            allocation_id=dep_id, provider="ionet", status="running", endpoint=url, model=want.model,
            gpu_model=offer.gpu_model, count=offer.count, region=offer.region, usd_per_hour=offer.usd_per_hour,
            created_at=now, expires_at=now + details.compute_minutes_remaining * 60,
            detail={"deployment_id": dep_id, "resource_private_name": name, "hardware_id": details.hardware_id,
                    "location_id": int(offer.offer_id.rsplit(":", 1)[1]), "duration_hours": hours,
                    "prepaid_usd": details.amount_paid, "model_id": self._model_id(want.model)})

    async def _wait_running(self, dep_id: str, deadline: float, timeout_s: float) -> tuple[api.Deployment, str]:
        """Poll until the deployment runs and its container has a URL; transient errors are waited out."""
        while True:
            wait = self.opts.poll_interval_s
            try:
                details = await self._details(dep_id)
                url = await self._public_url(dep_id) if details.status in api.RUNNING else None
            except RateLimited as exc:
                wait = max(wait, exc.retry_after_s or 0.0)
            except ProviderAuthError:
                raise
            except ProviderError as exc:  # a 5xx or a timeout while polling: the deployment may be fine
                log.info("ionet_poll_retry", deployment_id=dep_id, error=exc.message)
            else:
                if details.status in api.FAILED or details.status in api.ENDED:
                    raise ProviderError(f"deployment {dep_id} did not start: io.net says {details.status!r}",
                                        provider="ionet")
                if url:
                    return details, url
            if time.monotonic() + wait > deadline:
                raise ProviderError(f"deployment {dep_id} was not running within {timeout_s:g}s", provider="ionet")
            await asyncio.sleep(wait)

    async def _public_url(self, dep_id: str) -> str | None:
        page: api.ContainersPage = api.decode(await self._call("GET", f"{api.CAAS}/deployment/{dep_id}/containers"),
                                              api.ContainersPage)
        return next((w.public_url for w in page.workers if w.public_url), None)

    async def _destroy_by_name(self, name: str, hours: int) -> float | None:
        """Find a deployment by its unique name (a deploy that failed may still have made one) and
        destroy it; returns what io.net keeps, or None when there was none."""
        try:
            for page_no in range(1, 21):
                raw = await self._call("GET", f"{api.CAAS}/deployments", params={"page": page_no, "page_size": 100})
                page: api.DeploymentsPage = api.decode(raw, api.DeploymentsPage)
                for row in page.deployments:
                    if row.name == name and row.status not in ("destroyed", "completed", "termination requested"):
                        return await self._destroy_quietly(row.id, hours)
                if page_no * 100 >= page.total:
                    return None
        except HomeskilletError as exc:
            log.warning("ionet_orphan_unknown", name=name, error=exc.message)
        return None

    async def _destroy_quietly(self, dep_id: str, hours: int | None) -> float | None:
        try:
            return (await self._destroy(dep_id, hours)).billed_usd
        except HomeskilletError as exc:
            log.warning("ionet_destroy_failed", deployment_id=dep_id, error=exc.message)
            return None

    # -- release, extend, metrics ----------------------------------------------------------------

    async def _destroy(self, dep_id: str, hours: int | None) -> Release:
        try:
            await self._call("DELETE", f"{api.CAAS}/deployment/{dep_id}")
            state = "destroyed"
        except ProviderError as exc:
            if exc.http_status == 404:
                return Release(allocation_id=dep_id, billed_usd=None, detail={"status": "not found"})
            if exc.http_status != 400 or "already" not in exc.message:
                raise
            state = "already ended"
        finally:
            self._replicas.cache_clear()
        details = await self._details(dep_id)
        used = api.seconds_between(details.created_at, details.finished_at) or 0.0
        if hours is None:  # not made by us: io.net's served + remaining minutes (0 remaining once ended)
            hours = max(1, round((details.compute_minutes_served + details.compute_minutes_remaining) / 60))
        billed = api.billed_on_destroy(details.amount_paid, hours, used)
        log.info("ionet_destroyed", deployment_id=dep_id, billed_usd=billed, prepaid_usd=details.amount_paid)
        return Release(allocation_id=dep_id, billed_usd=billed,
                       detail={"status": state, "prepaid_usd": details.amount_paid,
                               "refund_usd": round(details.amount_paid - billed, 6), "used_s": used,
                               "rule": "first hour non-refundable, then pro rata"})

    async def release(self, allocation: Allocation) -> Release:
        self._stats.pop(allocation.allocation_id, None)
        return await self._destroy(allocation.allocation_id, int(allocation.detail.get("duration_hours", 0)) or None)

    async def extend(self, allocation: Allocation, hours: int) -> Allocation:
        """Prepay ``hours`` more; returns the allocation with its new expiry and totals."""
        if hours < 1:
            raise HomeskilletError(f"io.net extend: hours must be a whole number >= 1, got {hours}")
        raw = await self._call("POST", f"{api.CAAS}/deployment/{allocation.allocation_id}/extend",
                               json={"duration_hours": hours})
        details: api.Deployment = api.decode(raw, api.Deployment)
        detail = {**allocation.detail, "prepaid_usd": details.amount_paid,
                  "duration_hours": int(allocation.detail.get("duration_hours", 0)) + hours}
        return msgspec.structs.replace(allocation, detail=detail,
                                       expires_at=time.time() + details.compute_minutes_remaining * 60)

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        details = await self._details(allocation.allocation_id)
        stats = self._stats.get(allocation.allocation_id) or BoxStats()
        hours = int(allocation.detail.get("duration_hours", 0)) or 1
        served_s = details.compute_minutes_served * 60.0
        return AllocationMetrics(
            allocation_id=allocation.allocation_id, status=api.our_status(details.status),
            inference_count=stats.count, uptime_s=served_s,
            average_latency_ms=stats.latency_ms / stats.count if stats.count else None,
            cost_usd=api.billed_on_destroy(details.amount_paid, hours, served_s))

    async def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            await self._call("GET", f"{api.CAAS}/deployments", params={"page": 1, "page_size": 1})
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000)
        warm = [m for m, s in self._standing.items() if s.current is not None]
        return Health(ok=True, latency_ms=(time.perf_counter() - t0) * 1000, warm_models=warm, active=self._active)

    # -- inference -------------------------------------------------------------------------------

    def _standing_for(self, model: str) -> StandingAllocation:
        if model not in self._standing:
            want = AllocationRequest(model=model, gpu_model=self.opts.gpu_model, count=self.opts.gpus_per_container,
                                     duration_s=self.opts.duration_hours * 3600,
                                     max_usd_per_hour=self.opts.max_usd_per_hour,
                                     ready_timeout_s=self.opts.ready_timeout_s)
            self._standing[model] = StandingAllocation(lambda: self.allocate(want), self.release,
                                                      renew_before_s=self.opts.renew_before_s)
        return self._standing[model]

    async def _allocation(self, req: InferRequest) -> tuple[Allocation, StandingAllocation | None]:
        if req.allocation is not None:
            return req.allocation, None
        standing = self._standing_for(req.model)
        current = standing.current
        if (current is not None and self.opts.auto_extend and current.expires_at
                and time.time() + standing.renew_before_s >= current.expires_at):
            try:  # cheaper than a new deployment: no new first hour, no cold start
                standing.current = await self.extend(current, self.opts.duration_hours)
            except HomeskilletError as exc:
                log.warning("ionet_extend_failed", deployment_id=current.allocation_id, error=exc.message)
        return await standing.get(), standing

    async def _ended(self, alloc: Allocation) -> str | None:
        """io.net's status when the deployment no longer runs, else None (also when unsure)."""
        try:
            status = (await self._details(alloc.allocation_id)).status
        except HomeskilletError:
            return None
        return status if status in api.ENDED or status in api.FAILED else None

    async def _failed(self, exc: ProviderError, alloc: Allocation, standing: StandingAllocation | None,
                      t0: float) -> HomeskilletError:
        """Turn a failed inference into Preempted when the deployment ended under the strike."""
        if isinstance(exc, ProviderAuthError) or exc.http_status == 429:
            return exc
        status = await self._ended(alloc)
        if status is None:
            return exc
        if standing is not None:
            await standing.drop(alloc, release=True)
        billed = alloc.usd_per_hour * (time.perf_counter() - t0) / 3600.0
        return Preempted(f"io.net deployment {alloc.allocation_id} ended under the strike ({status}); the strike's "
                         "share of prepaid time is all io.net bills for it", billed_usd=billed)

    def _infer_timeout_s(self) -> float:
        return self.opts.infer_timeout_s

    async def close(self) -> None:
        """Destroy every standing deployment, then close the HTTP client if it is ours."""
        await self._release_standing()
        for cache in (self._hardware, self._price, self._replicas):
            cache.cache_clear()
        if self._owns_client:
            await self._client.aclose()
