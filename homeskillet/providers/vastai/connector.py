"""The Vast.ai connector: search offers, rent one (on demand, or as an interruptible bid), wait
until it runs and its model server answers, serve strikes on it, destroy it.

Vast's quirks, each handled here: an offer can vanish between search and rent (try the next, then
``NoCapacity``); a rent can succeed yet leave a *stopped* instance (a bid under the minimum, a
failed start), which we destroy before trying the next offer; a container that cannot start says
so in ``status_msg`` (OCI error); an outbid instance has all three states ``stopped``, and a strike
running on it ends in ``Preempted``, billed per second at the instance's rate.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import ClassVar

import httpx
import msgspec

from ...errors import BadRequest, HomeskilletError, NoCapacity, ProviderError
from ...secrets import Secret, resolve_secret
from ..base import Allocation, AllocationMetrics, AllocationRequest, Health, ProviderOffer, Release, register
from ..rented import ControlPlane, Diagnosis, RentedConnector, check_request, endpoint_url, preempted
from .wire import (
    PROVIDER,
    VAST_URL,
    Envelope,
    VastInstance,
    VastOffer,
    error_for,
    host_port,
    offer_ref,
    offers_from,
    phase,
    rent_body,
    search_query,
)

__all__ = ["VastConnector"]


class _Offers(msgspec.Struct):
    offers: list[VastOffer] = []


class _Shown(msgspec.Struct):
    instances: VastInstance | None = None


class _Created(msgspec.Struct):
    success: bool | None = None
    new_contract: int | None = None


class _Listed(msgspec.Struct):
    instances: list[msgspec.Raw] = []


def _describe(resp: httpx.Response) -> str:
    try:
        return msgspec.json.decode(resp.content, type=Envelope).text()
    except msgspec.DecodeError:
        return f"HTTP {resp.status_code}"


@register(PROVIDER)
class VastConnector(RentedConnector):
    """Options (a pool's ``options`` table) describe the pool's standing instance and how to reach it;
    ``endpoint`` is where a rented instance's model server answers, from ``{ip}``, ``{port}`` (the
    host port mapped to ``port``), ``{id}`` and ``{origin}`` (the simulator serves it at
    ``{origin}/instance/{id}``)."""

    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(self, *, base_url: str = VAST_URL, api_key: str | Secret | None = None,
                 api_key_env: str = "VAST_API_KEY", api_key_file: str | None = None,
                 model: str = "", gpu_name: str = "", num_gpus: int = 1, min_vram_mb: int = 0,
                 max_usd_per_hour: float = 0.0, region: str = "", interruptible: bool = False,
                 bid_usd_per_hour: float = 0.0, duration_s: int = 3600, image: str = "vllm/vllm-openai:latest",
                 disk_gb: float = 40.0, port: int = 8000, args: list[str] | None = None, verified: bool = True,
                 min_reliability: float = 0.0, endpoint: str = "http://{ip}:{port}", max_offers: int = 3,
                 poll_s: float = 2.0, ready_timeout_s: float = 600.0, timeout_s: float = 30.0,
                 infer_timeout_s: float = 300.0, quote_ttl_s: float = 2.0, quote_limit: int = 16,
                 retries: int = 3, max_retry_wait_s: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        if not 1 <= port <= 65535 or disk_gb <= 0 or poll_s <= 0 or max_offers < 1 or quote_limit < 1:
            raise BadRequest("vastai options: port must be 1..65535 and disk_gb, poll_s, max_offers, quote_limit "
                             f"positive (got port={port}, disk_gb={disk_gb}, poll_s={poll_s}, "
                             f"max_offers={max_offers}, quote_limit={quote_limit})")
        endpoint_url(endpoint, base_url, ip="203.0.113.1", port=1, id=1)  # a bad template fails now
        standing = AllocationRequest(model=model, gpu_model=gpu_name, count=num_gpus, min_vram_mb=min_vram_mb,
                                     max_usd_per_hour=max_usd_per_hour, region=region, preemptible=interruptible,
                                     bid_usd_per_hour=bid_usd_per_hour, duration_s=duration_s,
                                     ready_timeout_s=ready_timeout_s, workload="standing")
        check_request(PROVIDER, standing)
        key = resolve_secret("vastai api key", value=api_key, env=api_key_env, file=api_key_file)
        assert key is not None  # required=True raises instead
        super().__init__(standing=standing, client=client, infer_timeout_s=infer_timeout_s, quote_ttl_s=quote_ttl_s)
        self.api = ControlPlane(PROVIDER, base_url, key, self.client, describe=_describe, timeout_s=timeout_s,
                                retries=retries, max_wait_s=max_retry_wait_s)
        self.image, self.disk_gb, self.port, self.args = image, disk_gb, port, list(args or [])
        self.verified, self.min_reliability, self.endpoint = verified, min_reliability, endpoint
        self.max_offers, self.poll_s, self.quote_limit = max_offers, poll_s, quote_limit

    # -- control plane --------------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: object = None) -> bytes:
        resp = await self.api.send(method, path, body)
        env = Envelope()
        try:
            env = msgspec.json.decode(resp.content, type=Envelope)
        except msgspec.DecodeError:
            if resp.status_code < 400:
                raise ProviderError(f"{method} {path}: unreadable answer", provider=PROVIDER,
                                    http_status=resp.status_code) from None
        if resp.status_code >= 400 or env.success is False:
            raise error_for(resp.status_code, env)
        return resp.content

    async def _show(self, instance_id: int) -> VastInstance | None:
        raw = await self._call("GET", f"/instances/{instance_id}/?owner=me")
        return msgspec.json.decode(raw, type=_Shown).instances

    async def _destroy(self, instance_id: int) -> bool:
        """Destroy; False when Vast no longer knows the instance (already gone counts as done)."""
        try:
            await self._call("DELETE", f"/instances/{instance_id}/")
        except ProviderError as exc:
            if "no_such_instance" in exc.message or exc.http_status == 404:
                return False
            raise
        return True

    # -- quote ----------------------------------------------------------------------------------
    async def _search(self, want: AllocationRequest) -> list[VastOffer]:
        query = search_query(want, disk_gb=self.disk_gb, verified=self.verified,
                             min_reliability=self.min_reliability, limit=self.quote_limit)
        return msgspec.json.decode(await self._call("POST", "/bundles/", query), type=_Offers).offers

    async def _quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        if want.accelerator != "gpu":
            return []
        check_request(PROVIDER, want)
        return offers_from(await self._search(want), want, disk_gb=self.disk_gb)

    # -- allocate -------------------------------------------------------------------------------
    async def allocate(self, want: AllocationRequest) -> Allocation:
        check_request(PROVIDER, want, allocating=True)
        if want.offer_id:
            try:
                ask, interruptible = offer_ref(want.offer_id)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            bid = want.bid_usd_per_hour if interruptible else None
            if interruptible and not bid:
                raise BadRequest(f"offer {want.offer_id} is interruptible: set bid_usd_per_hour (a $/h bid) "
                                 "or pick the offer from quote(), which prices it")
            candidates: list[tuple[int, float | None]] = [(ask, bid)]
        else:
            rows = await self._search(want)
            bids = {r.id: want.bid_usd_per_hour or r.min_bid for r in rows}
            offers = [o for o in offers_from(rows, want, disk_gb=self.disk_gb) if o.preemptible == want.preemptible]
            if not offers:
                raise NoCapacity(f"no offer fits: {_wanted(want)}", provider=PROVIDER)
            asks = [offer_ref(o.offer_id)[0] for o in offers[: self.max_offers]]
            candidates = [(a, bids[a] if want.preemptible else None) for a in asks]
        why: list[str] = []
        deadline = time.monotonic() + want.ready_timeout_s
        for ask, bid in candidates:
            try:
                return await self._rent(ask, bid, want, deadline)
            except NoCapacity as exc:  # gone, refused, or left stopped: the next offer may do
                why.append(f"offer {ask}: {exc.message.removeprefix(PROVIDER + ': ')}")
        raise NoCapacity(f"tried {len(why)} offer(s), none could be rented: " + "; ".join(why), provider=PROVIDER)

    async def _rent(self, ask: int, bid: float | None, want: AllocationRequest, deadline: float) -> Allocation:
        label = f"hs-{want.workload or 'strike'}-{uuid.uuid4().hex[:8]}"
        args = ["--model", want.model, "--port", str(self.port), *self.args] if want.model else list(self.args)
        body = rent_body(image=self.image, disk_gb=self.disk_gb, label=label, port=self.port, args=args, price=bid)
        created = msgspec.json.decode(await self._call("PUT", f"/asks/{ask}/", body), type=_Created)
        if created.new_contract is None:
            raise ProviderError(f"rent of offer {ask} answered without an instance id", provider=PROVIDER)
        iid, t_created = created.new_contract, time.time()
        try:
            inst, url = await self._until_serving(iid, deadline, want.ready_timeout_s)
        except BaseException:
            await asyncio.shield(self._cleanup(iid))  # a half-created instance bills until destroyed
            raise
        life = (inst.end_date - inst.start_date) if inst.end_date and inst.start_date else 0.0
        return Allocation(
            allocation_id=str(iid), provider=PROVIDER, endpoint=url, model=want.model, gpu_model=inst.gpu_name,
            count=inst.num_gpus, region=(inst.geolocation or "").rsplit(", ", 1)[-1], usd_per_hour=inst.dph_total,
            preemptible=bid is not None, created_at=t_created, expires_at=t_created + life if life > 0 else 0.0,
            detail={"instance_id": iid, "ask_id": ask, "bid_usd_per_hour": bid, "label": label,
                    "vram_mb": int(inst.gpu_ram)},
        )

    async def _cleanup(self, iid: int) -> None:
        try:
            await self._destroy(iid)
        except HomeskilletError:
            pass  # reported by the caller's error; the instance shows up in the account's listing

    async def _until_serving(self, iid: int, deadline: float, limit_s: float) -> tuple[VastInstance, str]:
        """Poll until the instance runs and its model server answers ``/health``."""
        while True:
            inst = await self._show(iid)
            state = phase(inst)
            if state == "gone" or inst is None:
                raise NoCapacity(f"instance {iid} vanished while starting", provider=PROVIDER)
            if state == "stopped":
                raise NoCapacity(f"instance {iid} was left stopped ({inst.status_msg or 'no reason given'}); "
                                 "destroyed it", provider=PROVIDER)
            if state == "failed":
                raise ProviderError(f"instance {iid} cannot start: {inst.status_msg}; destroyed it "
                                    "(check the image and its arguments)", provider=PROVIDER)
            ip, port = inst.public_ipaddr, host_port(inst, self.port)
            if state == "running" and ip and port:
                url = endpoint_url(self.endpoint, self.api.base_url, ip=ip, port=port, id=iid)
                if await self._healthy(url, self.api.timeout_s):
                    return inst, url
            if time.monotonic() >= deadline:
                raise ProviderError(f"instance {iid} was not serving within {limit_s:g}s "
                                    f"({inst.actual_status}: {inst.status_msg}); destroyed it", provider=PROVIDER)
            await asyncio.sleep(self.poll_s)

    # -- after a failed inference ---------------------------------------------------------------
    async def _diagnose(self, alloc: Allocation, detail: str, seconds: float) -> Diagnosis:
        iid = int(alloc.detail.get("instance_id", alloc.allocation_id))
        try:
            inst = await self._show(iid)
        except HomeskilletError as exc:
            return Diagnosis(ProviderError(f"instance {iid}: {detail}; its state is unknown ({exc.message})",
                                           provider=PROVIDER), dead=False)
        state = phase(inst)
        if state == "stopped" and alloc.preemptible:
            return Diagnosis(preempted(PROVIDER, f"instance {iid} was outbid mid-inference ({detail})",
                                       alloc.usd_per_hour, seconds), dead=True)
        if state in ("stopped", "gone", "failed"):
            return Diagnosis(ProviderError(f"instance {iid} is {state}: {detail}", provider=PROVIDER), dead=True)
        return Diagnosis(ProviderError(f"instance {iid} is {state} but its model server failed: {detail}",
                                       provider=PROVIDER), dead=False)

    # -- release, metrics, health ---------------------------------------------------------------
    async def release(self, allocation: Allocation) -> Release:
        iid = int(allocation.detail.get("instance_id", allocation.allocation_id))
        existed = await self._destroy(iid)
        self.forget(allocation.allocation_id)
        secs = max(0.0, time.time() - allocation.created_at) if allocation.created_at else 0.0
        return Release(allocation_id=allocation.allocation_id,
                       detail={"destroyed": existed, "seconds": round(secs, 3),
                               "estimated_usd": round(allocation.usd_per_hour * secs / 3600.0, 6)})

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        iid = int(allocation.detail.get("instance_id", allocation.allocation_id))
        inst = await self._show(iid)
        count, mean = self.stats(allocation.allocation_id)
        state = phase(inst)
        status = {"running": "running", "starting": "pending", "gone": "released"}.get(
            state, "preempted" if allocation.preemptible and state == "stopped" else "failed")
        secs = max(0.0, time.time() - allocation.created_at) if allocation.created_at else 0.0
        return AllocationMetrics(
            allocation_id=allocation.allocation_id, status=status,
            gpu_utilization=inst.gpu_util / 100.0 if inst is not None and inst.gpu_util is not None else None,
            inference_count=count, average_latency_ms=mean,
            uptime_s=(inst.uptime_mins or 0.0) * 60.0 if inst is not None else 0.0,
            cost_usd=round(allocation.usd_per_hour * secs / 3600.0, 6),
        )

    async def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            listed = msgspec.json.decode(await self._call("GET", "/instances/"), type=_Listed)
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000.0)
        current = self.standing.current
        return Health(ok=True, detail=f"{len(listed.instances)} instance(s) on the account",
                      latency_ms=(time.perf_counter() - t0) * 1000.0, active=self.active,
                      warm_models=[current.model] if current is not None and current.model else [])


def _wanted(want: AllocationRequest) -> str:
    parts = [f"{want.count}x {want.gpu_model or 'any GPU'}"]
    if want.min_vram_mb:
        parts.append(f">= {want.min_vram_mb} MB each")
    if want.max_usd_per_hour:
        parts.append(f"<= ${want.max_usd_per_hour}/h")
    if want.region:
        parts.append(f"in {want.region}")
    parts.append("interruptible" if want.preemptible else "on demand")
    return ", ".join(parts)
