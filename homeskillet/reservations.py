"""Reservations: compute held ahead of use, on the loop.

``plan`` (pure) turns a ``ReserveRequest`` and the pools' standing offers into failover steps:
the named provider (or every provider, for ``auto``) → each of ``fallback_providers`` → any
provider (``enable_hybrid``) → local. Within a step pools are ordered by what provider choice
weighs: spot price, load (queue depth against free slots), availability of the GPU model, and
region. The cost ceiling is checked at every step, against the offer and again against the price
the provider actually allocated at (an allocation over the ceiling is released at once).

A pool whose connector allocates (hosted.ai, Vast.ai, RunPod, io.net, TPU) gets a ``Reserve`` on
``hs.agent.<pool>``; its host calls ``connector.allocate`` and answers with the ``Allocation``.
A pool that has nothing to allocate (an API, an Ollama node, local MLX) is simply pinned. Strikes
on a reservation carry its allocation, so any host of the pool can serve them.

An allocation is bought by the hour, so against the tenant's shared budget it holds its worst
case before it is made (the hourly price × count × ``duration_s``) and settles its bill at
release, capped at that hold. A pinned pool holds nothing here: its strikes hold and are charged
one by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from .bounded import BoundedDict
from .budgets import Budgets
from .covenant import PROVIDERS
from .errors import BadRequest, BudgetExceeded, HomeskilletError, NoPoolError, NotFound, Unmet
from .ids import new_id
from .providers.base import _REGISTRY
from .scoring import model_served
from .subjects import Subjects
from .telemetry import POOL_LOSS_USD, get_logger, labelled
from .wire import (
    Allocated,
    AllocationMetrics,
    AllocationRequest,
    ErrorReply,
    FreeAllocation,
    Freed,
    MetricsAsk,
    MetricsReply,
    Offer,
    Quote,
    Reservation,
    Reserve,
    ReserveRequest,
    decode_agent_reply,
    encode,
)

__all__ = ["ALLOCATING_PROVIDERS", "Reservations", "Step", "plan", "validate_reserve"]

log = get_logger("homeskillet.reservations")

# Providers whose capacity must be allocated before use; every other pool is pinned as it is.
ALLOCATING_PROVIDERS = frozenset({"hostedai", "vastai", "runpod", "ionet", "tpu"})


@dataclass
class Step:
    label: str
    pools: list[Offer] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # pools of this step left out, with why


def _known_providers() -> set[str]:
    return {*PROVIDERS, *_REGISTRY}


def validate_reserve(req: ReserveRequest) -> None:
    for key, names in (("provider", [req.provider]), ("fallback_providers", req.fallback_providers)):
        unknown = [n for n in names if n != "auto" and n not in _known_providers()]
        if unknown:
            raise BadRequest(f"'{key}' names no known provider: {unknown[0][:64]!r} (known: auto, "
                             f"{', '.join(sorted(_known_providers()))})", term=key)
    if not 1 <= req.count <= 1024:
        raise BadRequest(f"'count' {req.count} is outside 1..1024", term="count")
    if not 60 <= req.duration_s <= 30 * 86400:
        raise BadRequest(f"'duration_s' {req.duration_s} is outside 60..2592000 (one minute to 30 days)",
                         term="duration_s")
    if not 0 <= req.max_cost_per_hr <= 1e9:
        raise BadRequest("'max_cost_per_hr' must be 0 (no ceiling) or positive, up to 1e9", term="max_cost_per_hr")
    for key in ("min_vram_mb", "max_vram_mb"):
        if not 0 <= getattr(req, key) <= 16 << 20:
            raise BadRequest(f"'{key}' {getattr(req, key)} is outside 0..16777216 (MB)", term=key)
    if req.max_vram_mb and req.max_vram_mb < req.min_vram_mb:
        raise BadRequest(f"'max_vram_mb' {req.max_vram_mb} is below 'min_vram_mb' {req.min_vram_mb}",
                         term="max_vram_mb")
    if not 0 <= req.min_tflops <= 1e7:
        raise BadRequest(f"'min_tflops' {req.min_tflops} is outside 0..1e7", term="min_tflops")
    if len(req.fallback_providers) > 16 or len(req.metadata) > 64:
        raise BadRequest("at most 16 'fallback_providers' and 64 'metadata' entries",
                         term="fallback_providers" if len(req.fallback_providers) > 16 else "metadata")
    if not req.tenant or len(req.tenant) > 128 or not req.tenant.isprintable():
        raise BadRequest("'tenant' must be 1..128 printable characters", term="tenant")


def _why_not(req: ReserveRequest, o: Offer) -> str | None:
    """Why offer ``o`` cannot hold this reservation (None: it can)."""
    if o.pool_class != "local" and o.accelerator != req.compute_type:
        return f"is {o.accelerator}, not {req.compute_type}"
    if req.gpu_model and req.gpu_model.lower() not in o.gpu_model.lower() and o.pool_class != "local":
        return f"has {o.gpu_model or 'no GPU model'}, not {req.gpu_model}"
    if req.pool_id and o.pool.split("/", 1)[-1] != req.pool_id and o.pool != req.pool_id:
        return f"is not pool {req.pool_id!r}"
    if req.model and not model_served(o.models, req.model):
        return f"does not serve {req.model!r}"
    if o.pool_class != "local" and o.vram_mb < req.min_vram_mb:
        return f"offers {o.vram_mb} MB VRAM, needs {req.min_vram_mb} MB"
    if o.pool_class != "local" and o.tflops < req.min_tflops:
        return f"offers {o.tflops:g} TFLOPS, needs {req.min_tflops:g}"
    if o.preemptible and not req.preemptible:
        return "is preemptible and the request does not allow it"
    hourly = o.usd_per_hour * req.count
    if req.max_cost_per_hr and hourly > req.max_cost_per_hr:
        return f"costs ${hourly:.2f}/h, over max_cost_per_hr ${req.max_cost_per_hr:.2f}"
    return None


def _order(o: Offer, region: str) -> tuple[float, float, int]:
    load = o.queue_depth / (o.free_slots + 1)
    return (o.usd_per_hour * (1.0 + load) + (0 if not region or o.region == region else 1e-6), load,
            -o.free_slots)


def plan(req: ReserveRequest, offers: list[Offer]) -> list[Step]:
    """Failover steps for ``req`` over ``offers``: primary, fallbacks, hybrid, local."""
    region = req.metadata.get("region", "")
    remote = [o for o in offers if o.pool_class != "local"]
    wanted: list[tuple[str, list[Offer]]] = []
    if req.provider == "auto":
        wanted.append(("auto", remote))
    else:
        wanted.append((req.provider, [o for o in remote if o.provider == req.provider]))
    wanted += [(p, [o for o in remote if o.provider == p]) for p in req.fallback_providers]
    if req.enable_hybrid and req.provider != "auto":
        wanted.append(("hybrid", remote))
    wanted.append(("local", [o for o in offers if o.pool_class == "local"]))
    steps: list[Step] = []
    seen: set[str] = set()
    for label, pool_offers in wanted:
        step = Step(label)
        for o in sorted(pool_offers, key=lambda o: _order(o, region)):
            if o.pool in seen:
                continue
            why = _why_not(req, o)
            if why is None:
                step.pools.append(o)
                seen.add(o.pool)
            else:
                step.passed.append(f"{o.pool}: {why}")
        steps.append(step)
    return steps


class Reservations:
    """The reservation table of this orchestrator, and the calls that fill and empty it."""

    def __init__(self, nc: NATS, subjects: Subjects, quotes: Callable[[], Sequence[Quote]], *,
                 allocate_timeout_s: float = 180.0, budgets: Budgets | None = None,
                 ended_max: int = 1000) -> None:
        self.nc, self.subjects = nc, subjects
        self._quotes = quotes
        self.allocate_timeout_s = allocate_timeout_s
        self.budgets = budgets
        self.table: dict[str, Reservation] = {}
        self.held: dict[str, float] = {}  # reservation_id -> what the tenant's budget holds for it
        # Released reservations stay readable by id, the last ``ended_max`` of them ([retention]).
        self._ended: BoundedDict[str, None] = BoundedDict(ended_max, "reservations_ended",
                                                          on_evict=lambda rid, _: self.table.pop(rid, None))

    def _offers(self) -> list[Offer]:
        now = int(time.time() * 1000)
        return [q.offer for q in self._quotes() if q.expires_at_ms > now]

    async def reserve(self, req: ReserveRequest) -> Reservation:
        validate_reserve(req)
        rid = new_id()
        tried: list[str] = []
        unmet: list[Unmet] = []
        refused: BudgetExceeded | None = None
        for step in plan(req, self._offers()):
            tried += [f"{step.label}: {p}" for p in step.passed]
            unmet += [Unmet("reservation", p) for p in step.passed]
            for offer in step.pools:
                try:
                    res = await self._budgeted(rid, req, offer)
                except BudgetExceeded as exc:  # a cheaper pool of a later step may still fit
                    refused = refused or exc
                    tried.append(f"{step.label}: {offer.pool}: {exc.message}")
                    continue
                except HomeskilletError as exc:
                    tried.append(f"{step.label}: {offer.pool}: {exc.message}")
                    unmet.append(Unmet(exc.term or "capacity", exc.message, offer.pool))
                    log.info("reserve_step_failed", pool=offer.pool, error=exc.message, reservation_id=rid)
                    continue
                res.tried = tried
                self.table[rid] = res
                log.info("reserved", reservation_id=rid, pool=res.pool, tenant=req.tenant,
                         usd_per_hour=res.usd_per_hour, steps_passed=len(tried))
                return res
        if refused is not None:
            raise refused  # 402: the budget, not the capacity, is what stood in the way
        raise NoPoolError(f"reservation ({req.compute_type} {req.gpu_model or 'any'} ×{req.count})", unmet,
                          tuple(tried))

    async def _budgeted(self, rid: str, req: ReserveRequest, offer: Offer) -> Reservation:
        """``_hold`` under a hold of the allocation's worst case on the tenant's budget."""
        amount = offer.usd_per_hour * req.count * req.duration_s / 3600.0
        if (self.budgets is None or offer.provider not in ALLOCATING_PROVIDERS
                or not await self.budgets.hold(req.tenant, rid, amount, ttl_s=req.duration_s)):
            return await self._hold(rid, req, offer)
        try:
            res = await self._hold(rid, req, offer)
        except BaseException:
            await self.budgets.release(req.tenant, rid)
            raise
        self.held[rid] = amount
        return res

    async def _hold(self, rid: str, req: ReserveRequest, offer: Offer) -> Reservation:
        now = time.time()
        res = Reservation(
            reservation_id=rid, tenant=req.tenant, provider=offer.provider, pool=offer.pool,
            model=req.model or next((m for m in offer.models if m != "*"), ""), gpu_model=offer.gpu_model,
            count=req.count, usd_per_hour=offer.usd_per_hour * req.count,
            endpoint_subject=self.subjects.reservation(rid), endpoint_path=f"/api/v1/inference/{rid}",
            created_at=now, expires_at=now + req.duration_s, metadata=dict(req.metadata),
        )
        if offer.provider not in ALLOCATING_PROVIDERS:
            return res  # nothing to allocate: the reservation pins the pool
        want = AllocationRequest(
            model=res.model, gpu_model=req.gpu_model or offer.gpu_model, accelerator=req.compute_type,
            count=req.count, min_vram_mb=req.min_vram_mb, max_vram_mb=req.max_vram_mb, min_tflops=req.min_tflops,
            region=offer.region, duration_s=req.duration_s, preemptible=req.preemptible,
            max_usd_per_hour=req.max_cost_per_hr, tenant=req.tenant, workload=req.metadata.get("workload_id", rid),
            ready_timeout_s=self.allocate_timeout_s,
        )
        reply = await self._ask(offer.pool, Reserve(reservation_id=rid, tenant=req.tenant, want=want),
                                self.allocate_timeout_s + 5)
        if not isinstance(reply, Allocated):
            raise HomeskilletError(f"{offer.pool} answered {type(reply).__name__} to a reservation")
        alloc = reply.allocation
        if req.max_cost_per_hr and alloc.usd_per_hour > req.max_cost_per_hr:
            await self._ask(offer.pool, FreeAllocation(allocation=alloc), 60)  # over the ceiling: give it back
            raise HomeskilletError(f"allocated at ${alloc.usd_per_hour:.2f}/h, over max_cost_per_hr "
                                   f"${req.max_cost_per_hr:.2f}; released", term="max_cost_per_hr")
        return msgspec.structs.replace(res, allocation=alloc, allocation_id=alloc.allocation_id,
                                       usd_per_hour=alloc.usd_per_hour or res.usd_per_hour,
                                       gpu_model=alloc.gpu_model or res.gpu_model,
                                       expires_at=alloc.expires_at or res.expires_at)

    async def _ask(self, pool: str, msg: msgspec.Struct, timeout: float) -> Allocated | Freed | MetricsReply:
        try:
            raw = await self.nc.request(self.subjects.agent(pool), encode(msg), timeout=timeout)
        except NoRespondersError:
            raise HomeskilletError(f"{pool}: no pool host is listening", term="capacity") from None
        except NatsTimeout:
            raise HomeskilletError(f"{pool}: no answer within {timeout:g}s", term="capacity") from None
        reply = decode_agent_reply(raw.data)
        if isinstance(reply, ErrorReply):
            raise HomeskilletError(reply.message, term="capacity" if reply.code == "no_capacity" else None)
        if not isinstance(reply, Allocated | Freed | MetricsReply):
            raise HomeskilletError(f"{pool}: unexpected reply {type(reply).__name__}")
        return reply

    def get(self, reservation_id: str, tenant: str) -> Reservation:
        res = self.table.get(reservation_id)
        if res is None or res.tenant != tenant:  # another tenant's id looks exactly like an unknown one
            raise NotFound(f"no reservation {reservation_id!r}", term="reservation_id")
        return res

    def of(self, tenant: str, status: str | None = None) -> list[Reservation]:
        """The tenant's reservations (only its own), newest first; ``status`` filters (e.g. "active")."""
        mine = [r for r in self.table.values() if r.tenant == tenant and (status is None or r.status == status)]
        return sorted(mine, key=lambda r: r.created_at, reverse=True)

    def set_port(self, reservation_id: str, port: int) -> Reservation:
        res = msgspec.structs.replace(self.table[reservation_id], local_port=port)
        self.table[reservation_id] = res
        return res

    async def release(self, reservation_id: str, tenant: str) -> Reservation:
        res = self.get(reservation_id, tenant)
        if res.status == "released":
            return res  # idempotent
        billed = res.usd_per_hour * max(0.0, time.time() - res.created_at) / 3600.0
        if res.allocation is not None:
            freed = await self._ask(res.pool, FreeAllocation(allocation=res.allocation), 60)
            if isinstance(freed, Freed) and freed.release.billed_usd is not None:
                billed = freed.release.billed_usd
        res = msgspec.structs.replace(res, status="released", billed_usd=billed)
        self.table[reservation_id] = res
        held = self.held.pop(reservation_id, None)
        if held is not None and self.budgets is not None:
            if billed > held:  # kept past its duration, or the provider billed more: not the tenant's
                labelled(POOL_LOSS_USD, pool=res.pool).inc(billed - held)
                log.warning("charge_capped_at_hold", reservation_id=reservation_id, billed_usd=billed,
                            hold_usd=held, pool_loss_usd=billed - held)
            await self.budgets.settle(tenant, reservation_id, min(billed, held))
        self._ended[reservation_id] = None
        log.info("reservation_released", reservation_id=reservation_id, billed_usd=billed, tenant=tenant)
        return res

    async def metrics(self, reservation_id: str, tenant: str) -> AllocationMetrics:
        res = self.get(reservation_id, tenant)
        if res.allocation is None or res.status != "active":
            return AllocationMetrics(allocation_id=res.allocation_id or res.reservation_id, status=res.status,
                                     uptime_s=max(0.0, time.time() - res.created_at))
        reply = await self._ask(res.pool, MetricsAsk(allocation=res.allocation), 30)
        assert isinstance(reply, MetricsReply)
        return reply.metrics

    async def close(self) -> None:
        """Release every active reservation (a clean shutdown leaves nothing billing)."""
        for res in list(self.table.values()):
            if res.status == "active":
                try:
                    await self.release(res.reservation_id, res.tenant)
                except HomeskilletError as exc:
                    log.warning("release_on_close_failed", reservation_id=res.reservation_id, error=exc.message)

