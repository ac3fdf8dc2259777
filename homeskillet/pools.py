"""Pool agents (actor): one per pool, speaking for its capacity, price, queue and track record.

The agent's state is the truth about its pool: which slots are leased, how its verdicts went,
what it predicts. It quotes (standing quotes for the hot path), bids (Contract Net), and commits
leases, re-validating whatever quote or award the strike was priced on. Its NATS I/O is done by
``PoolHost`` on the loop (strike.py); the agent itself never touches a socket.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import numpy as np

from .clock import now_ms
from .config import PoolSpec
from .errors import LeaseRejected
from .scoring import make_bid, model_served
from .supervisor import HsActor
from .wire import Award, Bid, CallForProposals, Health, Lease, Offer, ProviderOffer, Quote, Refusal, Strike, Verdict

__all__ = [
    "CommitLease",
    "CurrentQuote",
    "LatencyWindow",
    "LiveState",
    "PoolAgent",
    "PoolState",
    "ReleaseLease",
    "Served",
    "TrackRecord",
    "live_from",
    "revalidate",
]


class CurrentQuote(msgspec.Struct, frozen=True):
    ttl_ms: int
    admitted: int = 0  # strikes the host admitted on the loop and is running now


class CommitLease(msgspec.Struct, frozen=True):
    strike: Strike


class ReleaseLease(msgspec.Struct, frozen=True):
    lease_id: str


class Served(msgspec.Struct, frozen=True):
    """The host served a strike priced on a standing quote (told after the reply, off the hot path)."""

    model: str


def revalidate(spec: PoolSpec, strike: Strike) -> str | None:
    """Why a strike priced on a standing quote can no longer be served here (None: it can)."""
    if not model_served(spec.models, strike.model):
        return f"{spec.name}: does not serve {strike.model!r}"
    f = strike.fragment
    per_token = (f.prompt_tokens * spec.usd_per_mtok_in + f.max_tokens * spec.usd_per_mtok_out) / 1e6
    if strike.max_price_usd > 0 and spec.usd_per_hour == 0 and per_token > strike.max_price_usd * 1.0001:
        return (f"{spec.name}: quote {strike.quote_seq} is stale; the price is now ${per_token:.6f}, "
                f"the award was ${strike.max_price_usd:.6f}")
    return None


class LatencyWindow:
    """Percentiles of the last ``size`` strike latencies: a ring buffer, read when quoting.
    A window rather than a cumulative sketch, so the percentiles follow a pool whose tail changes."""

    LEVELS = (50, 90, 95, 99)

    def __init__(self, size: int = 512) -> None:
        self.buf = np.zeros(size, dtype=np.float64)
        self.n = 0  # samples ever added

    def add(self, ms: float) -> None:
        self.buf[self.n % len(self.buf)] = ms
        self.n += 1

    def percentiles(self) -> tuple[float, ...]:
        """(p50, p90, p95, p99) in ms; zeros while empty."""
        if self.n == 0:
            return (0.0,) * len(self.LEVELS)
        data = self.buf[: min(self.n, len(self.buf))]
        return tuple(float(x) for x in np.percentile(data, self.LEVELS))


class TrackRecord:
    """What this pool's verdicts say: kept share, an EWMA of observed latency, and a window of
    latencies for percentiles (hedged strikes fire past one of them)."""

    def __init__(self) -> None:
        self.kept = 0
        self.total = 0
        self.latency_ewma_ms: float | None = None
        self.latency = LatencyWindow()

    def add(self, v: Verdict) -> None:
        if v.cancelled:
            # A hedge loser we stopped: not the pool's failure, but its latency was at least this
            # long (censored), and leaving it out would hide exactly the tail hedging reacts to.
            self.latency.add(v.latency_ms)
            return
        self.total += 1
        self.kept += 1 if v.kept else 0
        if not v.failed and not v.preempted:
            self.latency.add(v.latency_ms)
            a = 0.2
            prev = self.latency_ewma_ms
            self.latency_ewma_ms = v.latency_ms if prev is None else (1 - a) * prev + a * v.latency_ms

    @property
    def reliability(self) -> float:
        # Laplace-smoothed so one early failure does not condemn a pool for good.
        return (self.kept + 4) / (self.total + 4)


class LiveState(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says now (``Connector.quote`` and ``health``), polled by the pool host.
    A price of None keeps the pool spec's."""

    healthy: bool = True
    detail: str = ""
    usd_per_hour: float | None = None
    usd_per_mtok_in: float | None = None
    usd_per_mtok_out: float | None = None
    available: int | None = None  # units the provider can give now; 0 = sold out
    warm_models: tuple[str, ...] = ()
    at_ms: int = 0

    def apply(self, spec: PoolSpec) -> PoolSpec:
        """The spec as the market has it now: live prices replace configured ones."""
        changes: dict[str, Any] = {}
        for f in ("usd_per_hour", "usd_per_mtok_in", "usd_per_mtok_out"):
            if getattr(self, f) is not None:
                changes[f] = getattr(self, f)
        return msgspec.structs.replace(spec, **changes) if changes else spec


def live_from(offers: list[ProviderOffer], health: Health | None, at_ms: int) -> LiveState:
    """Fold a provider's current offers and health into one LiveState: the cheapest offer sets the
    price the pool bids at; availability is what all the fitting offers add up to."""
    warm = set(health.warm_models if health else [])
    for o in offers:
        warm.update(o.warm_models)
    healthy = health.ok if health else True
    if not offers:
        return LiveState(healthy=healthy, detail=health.detail if health else "", available=0,
                         warm_models=tuple(sorted(warm)), at_ms=at_ms)
    best = min(offers, key=lambda o: (o.usd_per_hour, o.usd_per_mtok_in + o.usd_per_mtok_out))
    return LiveState(healthy=healthy, detail=health.detail if health else "", usd_per_hour=best.usd_per_hour,
                     usd_per_mtok_in=best.usd_per_mtok_in, usd_per_mtok_out=best.usd_per_mtok_out,
                     available=sum(o.available for o in offers), warm_models=tuple(sorted(warm)), at_ms=at_ms)


class PoolState:
    def __init__(self, spec: PoolSpec, provider: str | None = None) -> None:
        self.spec = spec
        self.provider = provider or spec.provider
        self.leases: dict[str, Lease] = {}
        self.by_strike: dict[str, str] = {}
        self.record = TrackRecord()
        self.seq = 1
        self.warm: set[str] = set()
        self.live: LiveState | None = None

    def offer(self, admitted: int = 0) -> Offer:
        s = self.live.apply(self.spec) if self.live else self.spec
        busy = len(self.leases) + admitted
        start = s.start_ms
        if self.record.latency_ewma_ms is not None:
            # Observed latency corrects the static prediction, but never below the spec's floor.
            start = max(s.start_ms, self.record.latency_ewma_ms - s.ms_per_token * 32)
        p50, p90, p95, p99 = self.record.latency.percentiles()
        return Offer(
            pool=s.name, provider=self.provider, pool_class=s.pool_class, models=list(s.models),
            accelerator=s.accelerator,  # type: ignore[arg-type]
            gpu_model=s.gpu_model, vram_mb=s.vram_mb, tflops=s.tflops, region=s.region,
            preemptible=s.preemptible, usd_per_mtok_in=s.usd_per_mtok_in, usd_per_mtok_out=s.usd_per_mtok_out,
            usd_per_hour=s.usd_per_hour, start_ms=start, ms_per_token=s.ms_per_token,
            free_slots=max(0, s.capacity - busy), queue_depth=max(0, busy - s.capacity),
            warm_models=sorted(self.warm | set(self.live.warm_models if self.live else ())),
            reliability=self.record.reliability, context_tokens=s.context_tokens,
            latency_samples=self.record.latency.n, latency_p50_ms=p50, latency_p90_ms=p90, latency_p95_ms=p95,
            latency_p99_ms=p99,
        )

    def sold_out(self) -> str | None:
        """Why the provider cannot serve now, as the live state says (None: it can)."""
        if self.live is None:
            return None
        if not self.live.healthy:
            return f"unhealthy: {self.live.detail or 'health check failed'}"
        if self.live.available == 0 and not self.leases:
            return "the provider has no capacity that fits"
        return None

    def full(self) -> bool:
        return len(self.leases) >= self.spec.capacity + self.spec.queue_limit


class PoolAgent(HsActor):
    name = "pool"

    def handle(self, msg: Any) -> Any:
        s: PoolState = self.state
        match msg:
            case CurrentQuote(ttl_ms=ttl, admitted=admitted):
                if s.sold_out():
                    return None  # no standing quote: the pool drops out of the book until it recovers
                t = now_ms()
                return Quote(offer=s.offer(admitted), seq=s.seq, issued_at_ms=t, expires_at_ms=t + ttl)
            case CallForProposals() as cfp:
                if s.full():
                    return Refusal(cfp_id=cfp.cfp_id, pool=s.spec.name, term="capacity", detail="queue full")
                if why := s.sold_out():
                    return Refusal(cfp_id=cfp.cfp_id, pool=s.spec.name, term="capacity", detail=why)
                return make_bid(
                    s.offer(), cfp.covenant, prompt_tokens=cfp.prompt_tokens, max_tokens=cfp.max_tokens,
                    quote_seq=s.seq, expires_at_ms=cfp.reply_by_ms + 2000, allow_degrade=True, cfp_id=cfp.cfp_id,
                )
            case Award(bid=bid, strike_id=sid):
                return self._lease(sid, bid)
            case CommitLease(strike=strike):
                return self._commit(strike)
            case Served(model=model):
                s.warm.add(model)
                return None
            case ReleaseLease(lease_id=lid):
                lease = s.leases.pop(lid, None)
                if lease is not None:
                    s.by_strike.pop(lease.strike_id, None)
                return lease is not None
            case Verdict() as v:
                s.record.add(v)
                return None
            case LiveState() as live:
                if s.live is None or (live.usd_per_hour, live.usd_per_mtok_in, live.usd_per_mtok_out) != (
                        s.live.usd_per_hour, s.live.usd_per_mtok_in, s.live.usd_per_mtok_out):
                    s.seq += 1  # a new price: strikes priced on older quotes re-validate against it
                s.live = live
                return None
        raise TypeError(f"pool agent cannot handle {type(msg).__name__}")

    def _lease(self, strike_id: str, bid: Bid) -> Lease:
        s: PoolState = self.state
        if s.full():
            raise LeaseRejected(f"{s.spec.name}: no free capacity (queue full)", term="capacity")
        lease = Lease(lease_id=uuid.uuid4().hex, pool=s.spec.name, strike_id=strike_id, price_usd=bid.price_usd,
                      expires_at_ms=now_ms() + 60_000)
        s.leases[lease.lease_id] = lease
        s.by_strike[strike_id] = lease.lease_id
        s.warm.add(bid.model)
        return lease

    def _commit(self, strike: Strike) -> Lease:
        """A strike under a Contract Net award: its lease must still be held."""
        s: PoolState = self.state
        lease = s.leases.get(strike.lease_id or "")
        if lease is None or lease.expires_at_ms < now_ms():
            raise LeaseRejected(f"{s.spec.name}: lease {strike.lease_id} is unknown or expired", term="lease")
        return lease
