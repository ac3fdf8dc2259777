"""The Google Cloud TPU v2 connector: a TPU VM (v4-8 or v5litepod-8) running a model server.

allocate
    On-demand: ``POST …/nodes?nodeId=`` returns an Operation, polled (``GET /v2/{name}``) until
    ``done``, then the node until READY. Spot: a queued resource (``POST …/queuedResources`` with
    ``spot: {}`` and a ``validUntilDuration``) polled through ACCEPTED / WAITING_FOR_RESOURCES /
    PROVISIONING to ACTIVE. Whatever fails after the create was sent (an Operation ending in
    ``error``, a half-created STOPPED node, a queue that never got capacity, slow readiness,
    cancellation) is cancelled and deleted: nothing is left behind.
quote
    The API publishes no prices and no capacity: offers come from the catalogue (``catalog.py``)
    for the accelerator type the zone offers (``GET …/acceleratorTypes/{type}``, cached), with
    ``available = 0`` for ``capacity_cooldown_s`` after Google said RESOURCE_EXHAUSTED.
infer
    OpenAI-compatible chat on the node's server. A failure on a node that Google has PREEMPTED or
    TERMINATED is ``Preempted``, billed per second at the node's rate for the strike's time (Google
    bills a spot node per second until it is preempted).
release
    ``DELETE`` the node (or its queued resource, ``force=true``) and wait for the Operation;
    ``Release.billed_usd`` is the catalogue price x the time the node served.

Auth is an OAuth2 access token (``cloud-platform`` scope) from ``api_key``, ``api_key_file`` or
``$GOOGLE_OAUTH_ACCESS_TOKEN``, e.g. ``gcloud auth print-access-token``; no Google SDK is used.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from typing import Any

import httpx
from async_lru import alru_cache

from ...errors import HomeskilletError, NoCapacity, Preempted, ProviderAuthError, ProviderError, RateLimited
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
from ..ionet.chat import BoxStats, ChatOnBox
from ..ionet.options import parse_options, take_secret
from . import google
from .catalog import TpuOptions

__all__ = ["TpuConnector"]

log = get_logger("homeskillet.providers.tpu")
_ID = re.compile(r"^[a-z][-a-z0-9]{0,19}$")


def _label(text: str, size: int = 24) -> str:
    """A Google label value / id fragment: lowercase letters, digits and single dashes."""
    out = "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in text.lower()).split("-")))
    return out[:size].strip("-") or "model"


@register("tpu")
class TpuConnector(ChatOnBox, Connector):
    unsupported = {"bid": "Cloud TPU sells spot and on-demand capacity at fixed prices; there is no bidding"}

    def __init__(self, *, client: httpx.AsyncClient | None = None, **options: Any) -> None:
        rest, self._token = take_secret(options, "Cloud TPU OAuth2 access token", "GOOGLE_OAUTH_ACCESS_TOKEN")
        self.opts = parse_options(TpuOptions, rest, "tpu")
        if not _ID.match(self.opts.node_prefix):
            raise HomeskilletError(f"tpu pool options: node_prefix {self.opts.node_prefix!r} must be 1-20 "
                                   "lowercase letters, digits or dashes, starting with a letter")
        self.parent = f"projects/{self.opts.project}/locations/{self.opts.zone}"
        self._owns_client = client is None
        self._client = make_client(self.opts.base_url, timeout=self.opts.timeout_s, client=client)
        self._offered = alru_cache(maxsize=1, ttl=self.opts.catalog_ttl_s or None)(self._fetch_offered)
        self._exhausted_until = {False: 0.0, True: 0.0}  # spot? -> monotonic time
        self._standing: dict[str, StandingAllocation] = {}
        self._stats: dict[str, BoxStats] = {}
        self._lost_at: dict[str, float] = {}  # allocation id -> when we saw it preempted (unix s)
        self._active = 0

    # -- HTTP ----------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                    json: Any = None) -> bytes:
        """One Cloud TPU API call, bearer token in the header; Google's Status mapped to our errors."""
        try:
            resp = await self._client.request(method, path, params=params, json=json, timeout=self.opts.timeout_s,
                                              headers={"authorization": f"Bearer {self._token.reveal()}"})
        except httpx.TimeoutException:
            raise ProviderError(f"{method} {path} did not answer within {self.opts.timeout_s:g}s",
                                provider="tpu") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"cannot reach the Cloud TPU API ({type(exc).__name__})", provider="tpu") from None
        if resp.status_code >= 400:
            raise google.http_error(resp.status_code, resp.content, retry_after_s=retry_after(resp))
        return resp.content

    async def _get(self, name: str, type_: type[Any]) -> Any:
        return google.decode(await self._call("GET", f"/v2/{name}"), type_)

    async def _fetch_offered(self) -> bool:
        try:
            await self._call("GET", f"/v2/{self.parent}/acceleratorTypes/{self.opts.accelerator_type}")
        except ProviderError as exc:
            if exc.http_status == 404:
                return False
            raise
        return True

    # -- quote -----------------------------------------------------------------------------------

    def _fits(self, want: AllocationRequest) -> bool:
        """Minimums apply to the whole node: a model is sharded over all its chips."""
        o, info = self.opts, self.opts.info
        return (want.accelerator in ("tpu", "any")
                and want.gpu_model.lower() in ("", o.accelerator_type, info.family)
                and o.zone.startswith(want.region)
                and info.hbm_mb_per_chip * info.chips >= want.min_vram_mb
                and info.bf16_tflops_per_chip * info.chips >= want.min_tflops)

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        """Catalogue prices for the zone's accelerator type; one cached API call at most."""
        if not self._fits(want) or not await self._offered():
            return []
        o, info = self.opts, self.opts.info
        warm = sorted(m for m, s in self._standing.items() if s.current is not None)
        now = time.monotonic()
        # Google publishes no capacity: one more node is assumed rentable unless it just said
        # RESOURCE_EXHAUSTED; nodes this pool already holds serve strikes, so they count too.
        return [ProviderOffer(offer_id=f"{o.zone}/{o.accelerator_type}/{'spot' if spot else 'on-demand'}",
                              accelerator="tpu", gpu_model=o.accelerator_type, count=info.chips,
                              vram_mb=info.hbm_mb_per_chip, tflops=info.bf16_tflops_per_chip, region=o.zone,
                              usd_per_hour=o.usd_per_hour(spot), preemptible=spot,
                              available=(0 if self._exhausted_until[spot] > now else 1)
                              + (len(warm) if spot == o.spot else 0),
                              warm_models=warm if spot == o.spot else [])
                for spot in ([False, True] if want.preemptible or o.spot else [False])]

    # -- allocate --------------------------------------------------------------------------------

    async def _choose(self, want: AllocationRequest) -> ProviderOffer:
        offers = await self.quote(want)
        if want.offer_id:
            offers = [o for o in offers if o.offer_id == want.offer_id]
            if not offers:
                raise NoCapacity(f"offer {want.offer_id} is not offered here; quote again", provider="tpu")
        elif want.preemptible:
            offers = sorted(offers, key=lambda o: o.usd_per_hour)
        if not offers:
            raise NoCapacity(f"this pool rents {self.opts.accelerator_type} in {self.opts.zone}; it does not fit "
                             f"the request ({want.accelerator}, {want.gpu_model or 'any type'}, region "
                             f"{want.region or 'any'}, {want.min_vram_mb} MB+)", provider="tpu")
        ceiling = want.max_usd_per_hour
        fitting = [o for o in offers if not ceiling or o.usd_per_hour <= ceiling]
        if not fitting:
            raise NoCapacity(f"{offers[0].offer_id} costs ${offers[0].usd_per_hour:.2f}/h, above the ceiling "
                             f"${ceiling:.2f}/h", provider="tpu")
        if fitting[0].available <= 0:
            raise NoCapacity(f"Google had no {fitting[0].offer_id} capacity less than "
                             f"{self.opts.capacity_cooldown_s:g}s ago; try another pool", provider="tpu")
        return fitting[0]

    def _model_id(self, model: str) -> str:
        return self.opts.model_ids.get(model, model)

    def _node_body(self, model: str, spot: bool) -> dict[str, Any]:
        o = self.opts
        body: dict[str, Any] = {
            "acceleratorType": o.accelerator_type,
            "runtimeVersion": o.runtime_version or o.info.runtime_version,
            "networkConfig": {"enableExternalIps": o.external_ip},
            "labels": {**o.labels, "homeskillet": "pool", "model": _label(model, 63)},
        }
        if spot:
            body["schedulingConfig"] = {"spot": True}
        if o.metadata:
            body["metadata"] = dict(o.metadata)
        return body

    async def allocate(self, want: AllocationRequest) -> Allocation:
        if want.ready_timeout_s <= 0:
            raise HomeskilletError("tpu allocation: ready_timeout_s must be positive")
        if not want.model:
            raise HomeskilletError("tpu allocation: name the model the node should serve")
        offer = await self._choose(want)
        spot = offer.preemptible
        node_id = f"{self.opts.node_prefix}-{_label(want.model)}-{secrets.token_hex(4)}"
        body = self._node_body(want.model, spot)
        deadline = time.monotonic() + want.ready_timeout_s
        try:
            if spot:
                node, queued = await self._create_queued(node_id, body, deadline, want.ready_timeout_s), True
            else:
                node, queued = await self._create_node(node_id, body, deadline, want.ready_timeout_s), False
        except NoCapacity:
            self._exhausted_until[spot] = time.monotonic() + self.opts.capacity_cooldown_s
            raise
        o = self.opts
        endpoint = o.endpoint.format(ip=node.address(), port=o.serve_port, zone=o.zone, node_id=node_id,
                                     base_url=o.base_url.rstrip("/"))
        log.info("tpu_allocated", node=node.name, spot=spot, queued=queued, usd_per_hour=offer.usd_per_hour)
        return Allocation(
            allocation_id=node.name, provider="tpu", status="running", endpoint=endpoint, model=want.model,
            gpu_model=o.accelerator_type, count=o.info.chips, region=o.zone, usd_per_hour=offer.usd_per_hour,
            preemptible=spot, created_at=time.time(),
            detail={"node": node.name, "node_id": node_id, "project": o.project, "zone": o.zone,
                    "accelerator_type": o.accelerator_type, "chips": o.info.chips, "spot": spot,
                    "queued_resource": f"{self.parent}/queuedResources/{node_id}" if queued else "",
                    "runtime_version": body["runtimeVersion"], "model_id": self._model_id(want.model),
                    "price_basis": "catalogue list price per chip-hour, billed per second while READY"})

    async def _create_node(self, node_id: str, body: dict[str, Any], deadline: float,
                           timeout_s: float) -> google.Node:
        name = f"{self.parent}/nodes/{node_id}"
        op: google.Operation | None = None
        try:
            raw = await self._call("POST", f"/v2/{self.parent}/nodes", params={"nodeId": node_id}, json=body)
            op = google.decode(raw, google.Operation)
            assert op is not None
            await self._wait_operation(op, deadline, f"creating node {node_id}", timeout_s)
            return await self._wait_node(name, deadline, timeout_s)
        except BaseException as exc:
            refused = isinstance(exc, ProviderError) and op is None and 400 <= exc.http_status < 500
            if not refused:  # the create may have left a node (half-created, slow, cancelled): delete it
                await asyncio.shield(self._cleanup(name, op))
            raise

    async def _create_queued(self, node_id: str, body: dict[str, Any], deadline: float,
                             timeout_s: float) -> google.Node:
        qr_name = f"{self.parent}/queuedResources/{node_id}"
        request = {"tpu": {"nodeSpec": [{"parent": self.parent, "nodeId": node_id, "node": body}]}, "spot": {},
                   "queueingPolicy": {"validUntilDuration": f"{math.ceil(timeout_s)}s"}}
        op: google.Operation | None = None
        try:
            raw = await self._call("POST", f"/v2/{self.parent}/queuedResources", params={"queuedResourceId": node_id},
                                   json=request)
            op = google.decode(raw, google.Operation)
            assert op is not None
            await self._wait_operation(op, deadline, f"queueing {node_id}", timeout_s)
            await self._wait_active(qr_name, deadline, timeout_s)
            return await self._wait_node(f"{self.parent}/nodes/{node_id}", deadline, timeout_s)
        except BaseException as exc:
            refused = isinstance(exc, ProviderError) and op is None and 400 <= exc.http_status < 500
            if not refused:
                await asyncio.shield(self._cleanup(qr_name, op, queued=True))
            raise

    async def _pause(self, deadline: float, wait: float, late: HomeskilletError) -> None:
        if time.monotonic() + wait > deadline:
            raise late
        await asyncio.sleep(wait)

    async def _poll(self, name: str, type_: type[Any]) -> tuple[Any, float]:
        """GET ``name``; a transient failure answers (None, how long to wait) instead of raising."""
        try:
            return await self._get(name, type_), self.opts.poll_interval_s
        except RateLimited as exc:
            return None, max(self.opts.poll_interval_s, exc.retry_after_s or 0.0)
        except ProviderAuthError:
            raise
        except ProviderError as exc:
            if exc.http_status and exc.http_status < 500 and exc.http_status != 429:
                raise
            log.info("tpu_poll_retry", name=name, error=exc.message)
            return None, self.opts.poll_interval_s

    async def _wait_operation(self, op: google.Operation, deadline: float, what: str,
                              timeout_s: float) -> google.Operation:
        """Poll until ``done``, updating ``op`` in place (so a caller cleaning up knows it is over)."""
        while not op.done:  # proto3 omits done=false: the default makes a missing key "not done"
            late = ProviderError(f"{what} did not finish within {timeout_s:g}s", provider="tpu")
            await self._pause(deadline, self.opts.poll_interval_s, late)
            fresh, _ = await self._poll(op.name, google.Operation)
            if fresh is not None:
                op.done, op.error, op.response = fresh.done, fresh.error, fresh.response
        if op.error is not None:
            raise google.operation_error(op.error, what)
        return op

    async def _wait_node(self, name: str, deadline: float, timeout_s: float) -> google.Node:
        while True:
            node, wait = await self._poll(name, google.Node)
            if node is not None:
                if node.state == "READY":
                    return node  # type: ignore[no-any-return]
                if node.state in google.LOST or node.state in ("STOPPED", "DELETING"):
                    raise ProviderError(f"node {name} is {node.state} before it served", provider="tpu")
            late = ProviderError(f"node {name} was not READY within {timeout_s:g}s", provider="tpu")
            await self._pause(deadline, wait, late)

    async def _wait_active(self, qr_name: str, deadline: float, timeout_s: float) -> None:
        state = "ACCEPTED"
        while True:
            qr, wait = await self._poll(qr_name, google.QueuedResource)
            if qr is not None:
                state = qr.state.state
                if state == "ACTIVE":
                    return
                if state == "FAILED":
                    failed = qr.state.failed_data
                    error = failed.error if failed and failed.error else google.Status(code=8, message="no reason")
                    if error.code in (4, 8):  # not provisioned within the queueing policy: no capacity
                        raise NoCapacity(f"no spot {self.opts.accelerator_type} capacity in {self.opts.zone}: "
                                         f"{error.message}", provider="tpu")
                    raise google.operation_error(error, f"queued resource {qr_name}")
                if state in ("SUSPENDING", "SUSPENDED", "DELETING"):
                    raise ProviderError(f"queued resource {qr_name} is {state} (preempted) before it served",
                                        provider="tpu")
            if state in ("ACCEPTED", "WAITING_FOR_RESOURCES", "CREATING"):
                late: HomeskilletError = NoCapacity(f"no spot {self.opts.accelerator_type} capacity in "
                                                    f"{self.opts.zone} within {timeout_s:g}s ({state})",
                                                    provider="tpu")
            else:
                late = ProviderError(f"queued resource {qr_name} was not ACTIVE within {timeout_s:g}s ({state})",
                                     provider="tpu")
            await self._pause(deadline, wait, late)

    async def _cleanup(self, name: str, op: google.Operation | None, *, queued: bool = False) -> None:
        """Leave nothing behind after a failed create: cancel the Operation, delete what exists."""
        try:
            if op is not None and not op.done:
                try:
                    await self._call("POST", f"/v2/{op.name}:cancel")
                except ProviderError as exc:
                    log.info("tpu_cancel_failed", operation=op.name, error=exc.message)
            done = await self._delete(name, queued=queued, wait=True)
            log.info("tpu_cleaned_up", name=name, deleted=done is not None)
        except HomeskilletError as exc:
            log.warning("tpu_cleanup_failed", name=name, error=exc.message)

    async def _delete(self, name: str, *, queued: bool, wait: bool) -> google.Operation | None:
        """DELETE a node (or a queued resource with its nodes); None when it was already gone."""
        try:
            raw = await self._call("DELETE", f"/v2/{name}", params={"force": "true"} if queued else None)
        except ProviderError as exc:
            if exc.http_status == 404:
                return None
            if exc.http_status == 400 and "already being deleted" in exc.message:
                return google.Operation(name="", done=False)
            raise
        op: google.Operation = google.decode(raw, google.Operation)
        if wait and op.name:
            deadline = time.monotonic() + self.opts.release_timeout_s
            try:
                op = await self._wait_operation(op, deadline, f"deleting {name}", self.opts.release_timeout_s)
            except ProviderError as exc:
                log.warning("tpu_delete_unconfirmed", name=name, error=exc.message)
        return op

    # -- release, metrics, health ----------------------------------------------------------------

    def _served_s(self, alloc: Allocation) -> float:
        end = self._lost_at.get(alloc.allocation_id) or time.time()
        return max(0.0, end - alloc.created_at) if alloc.created_at else 0.0

    async def release(self, allocation: Allocation) -> Release:
        queued = str(allocation.detail.get("queued_resource") or "")
        op = await self._delete(queued or allocation.allocation_id, queued=bool(queued), wait=True)
        billed = round(allocation.usd_per_hour * self._served_s(allocation) / 3600.0, 6)
        self._stats.pop(allocation.allocation_id, None)
        self._lost_at.pop(allocation.allocation_id, None)
        log.info("tpu_released", node=allocation.allocation_id, billed_usd=billed)
        return Release(allocation_id=allocation.allocation_id, billed_usd=billed,
                       detail={"deleted": queued or allocation.allocation_id,
                               "operation": op.name if op else "", "done": bool(op is None or op.done),
                               "basis": "catalogue price x time since READY, per second"})

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        node: google.Node = await self._get(allocation.allocation_id, google.Node)
        if node.state in google.LOST:
            self._lost_at.setdefault(allocation.allocation_id, time.time())
        stats = self._stats.get(allocation.allocation_id) or BoxStats()
        served = self._served_s(allocation)
        return AllocationMetrics(allocation_id=allocation.allocation_id, status=google.our_status(node.state),
                                 inference_count=stats.count, uptime_s=served,
                                 average_latency_ms=stats.latency_ms / stats.count if stats.count else None,
                                 cost_usd=round(allocation.usd_per_hour * served / 3600.0, 6))

    async def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            await self._call("GET", f"/v2/{self.parent}")
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000)
        warm = [m for m, s in self._standing.items() if s.current is not None]
        return Health(ok=True, latency_ms=(time.perf_counter() - t0) * 1000, warm_models=warm, active=self._active)

    # -- inference -------------------------------------------------------------------------------

    async def _allocation(self, req: InferRequest) -> tuple[Allocation, StandingAllocation | None]:
        if req.allocation is not None:
            return req.allocation, None
        if req.model not in self._standing:
            want = AllocationRequest(model=req.model, accelerator="tpu", count=self.opts.info.chips,
                                     preemptible=self.opts.spot, ready_timeout_s=self.opts.ready_timeout_s,
                                     offer_id=f"{self.opts.zone}/{self.opts.accelerator_type}/"
                                              f"{'spot' if self.opts.spot else 'on-demand'}")
            self._standing[req.model] = StandingAllocation(lambda: self.allocate(want), self.release)
        standing = self._standing[req.model]
        return await standing.get(), standing

    async def _failed(self, exc: ProviderError, alloc: Allocation, standing: StandingAllocation | None,
                      t0: float) -> HomeskilletError:
        """A failure on a node Google took back (PREEMPTED/TERMINATED) is Preempted; else as it came."""
        if isinstance(exc, ProviderAuthError) or exc.http_status == 429:
            return exc
        try:
            node: google.Node = await self._get(alloc.allocation_id, google.Node)
            state = node.state
        except ProviderError as lookup:
            state = "DELETED" if lookup.http_status == 404 else ""
        if state not in google.LOST and state != "DELETED":
            return exc
        self._lost_at.setdefault(alloc.allocation_id, time.time())
        if standing is not None:  # forget it now; delete it without making the strike wait
            await standing.drop(alloc, release=False)
            try:
                await self._delete(str(alloc.detail.get("queued_resource") or alloc.allocation_id),
                                   queued=bool(alloc.detail.get("queued_resource")), wait=False)
            except HomeskilletError as err:
                log.warning("tpu_delete_failed", node=alloc.allocation_id, error=err.message)
        billed = round(alloc.usd_per_hour * (time.perf_counter() - t0) / 3600.0, 6)
        return Preempted(f"TPU node {alloc.allocation_id} is {state} (Google took it back mid-inference); "
                         "billed per second at the node's rate for the strike's time", billed_usd=billed)

    def _infer_timeout_s(self) -> float:
        return self.opts.infer_timeout_s

    async def close(self) -> None:
        """Delete every standing node (waiting for Google to confirm), then close our HTTP client."""
        await self._release_standing()
        self._offered.cache_clear()
        if self._owns_client:
            await self._client.aclose()
