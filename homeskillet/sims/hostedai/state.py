"""hosted.ai simulator state: tokens, pools, allocations, inference, per-second billing. No HTTP here.

``HostedAISim.clock`` is injectable so tests expire tokens and bill lifetimes without sleeping; the
modelled waits go through ``sleep_ms`` which also sums them in ``slept_ms`` (visible at time_scale 0).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
import msgspec

from homeskillet.sims.base import SimConfig, SimRandom, count_tokens, sim_completion
from homeskillet.sims.hostedai.wire import (
    AllocateRequest,
    Allocation,
    HostedAIError,
    InferenceRequest,
    InferenceResponse,
    InferenceUsage,
    Metrics,
    Pool,
    TokenResponse,
)

__all__ = ["DEFAULT_TIERS", "HostedAISim", "Lease"]

# tier: (vram_mb per vGPU, tflops, USD/h, preemptible) -- the design's pool matrix
DEFAULT_TIERS = {
    "standard": (16_384, 30.0, 0.80, False),
    "premium": (49_152, 80.0, 2.40, False),
    "preemptible": (16_384, 30.0, 0.25, True),
    "dedicated": (81_920, 300.0, 4.50, False),
}


@dataclass
class Lease:
    """An allocation plus the counters behind its metrics."""

    view: Allocation
    created_s: float
    expires_s: float
    ended_s: float | None = None
    busy_ms: float = 0.0
    latency_sum_ms: float = 0.0
    inferences: int = 0
    inflight: int = 0
    models: set[str] = field(default_factory=set)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _footprint_mb(model: str) -> int:
    """Weights at ~8 bits per parameter, guessed from the model name ("gemma-2b" -> 1843 MB)."""
    m = re.search(r"(\d+(?:\.\d+)?)b\b", model.lower())
    return int(float(m.group(1)) * 1024 * 0.9) if m else 1024


def _fit(model: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    """Deterministic text trimmed so its token count never exceeds ``max_tokens``."""
    words = sim_completion(model, prompt, max_tokens).split(" ")
    while words and count_tokens(" ".join(words)) > max_tokens:
        words.pop()
    text = " ".join(words)
    return text, count_tokens(text)


def _auth_error(code: str, message: str) -> HostedAIError:
    return HostedAIError(401, code, message, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _pools(config: SimConfig) -> list[Pool]:
    if "pools" in config.extra:  # a full replacement list of Pool objects
        return msgspec.convert(config.extra["pools"], list[Pool])
    return [
        Pool(id=f"{tier}-{region}", tier=tier, region=region, capacity=config.capacity, vram_mb=vram,
             tflops=tflops, price_per_hour=price, preemptible=pre)
        for region in config.extra.get("regions", ["us-east"])
        for tier, (vram, tflops, price, pre) in DEFAULT_TIERS.items()
    ]  # fmt: skip


class HostedAISim:
    """All simulator state, reachable as ``app.state.sim`` for introspection and clock control."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.rng = SimRandom(config)
        self.clock: Callable[[], float] = clock or time.time
        self.pools = {p.id: p for p in _pools(config)}
        self.leases: dict[str, Lease] = {}
        self.idempotency: dict[str, str] = {}  # Idempotency-Key -> allocation id
        self.billed_usd: defaultdict[str, float] = defaultdict(float)  # per tenant_id
        self.counters: Counter[str] = Counter()
        self.slept_ms = 0.0
        self.token_ttl_s = int(config.extra.get("token_ttl_s", 3600))
        self._secret = hashlib.sha256(f"hostedai-sim/{config.seed}/{config.api_key}".encode()).hexdigest()

    # -- auth --------------------------------------------------------------------------------
    def issue_token(self, api_key: str) -> TokenResponse:
        if api_key != self.config.api_key:
            raise HostedAIError(401, "invalid_api_key", "the API key is not recognised")
        now = int(self.clock())
        self.counters["tokens_issued"] += 1
        jti = str(self.counters["tokens_issued"])
        claims = {"sub": "sim-tenant", "iat": now, "exp": now + self.token_ttl_s, "jti": jti}
        return TokenResponse(access_token=jwt.encode(claims, self._secret, algorithm="HS256"),
                             expires_in=self.token_ttl_s)  # fmt: skip

    def authorize(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _auth_error("invalid_token", "missing 'Authorization: Bearer <jwt>' header")
        try:  # expiry is checked below against self.clock, so tests can advance time
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"],
                options={"verify_exp": False, "verify_iat": False, "require": ["exp"]},
            )  # fmt: skip
        except jwt.InvalidTokenError as exc:
            raise _auth_error("invalid_token", f"token rejected: {exc}") from exc
        if claims["exp"] <= self.clock():
            raise _auth_error("token_expired", "token expired; get a new one from POST /api/v1/auth/token")

    # -- faults and time ---------------------------------------------------------------------
    async def sleep_ms(self, ms: float) -> None:
        self.slept_ms += ms
        await self.rng.sleep_ms(ms)

    async def inject_faults(self) -> None:
        """Per-request random faults; the draw order is fixed so a seed replays the same faults."""
        f = self.config.faults
        if f.outage or self.rng.chance(f.unavailable_rate):
            raise HostedAIError(503, "service_unavailable", "hosted.ai is temporarily unavailable")
        if self.rng.chance(f.rate_limit_rate):
            raise HostedAIError(429, "rate_limited", "too many requests", {"Retry-After": "1"})
        if self.rng.chance(f.timeout_rate):  # a network partition: hang, then the gateway gives up
            await self.sleep_ms(f.timeout_s * 1000)
            raise HostedAIError(504, "gateway_timeout", "upstream did not answer in time")

    # -- allocations -------------------------------------------------------------------------
    def in_use(self, pool_id: str) -> int:
        return sum(1 for x in self.leases.values() if x.view.pool_id == pool_id and x.view.status == "active")

    def sweep(self) -> None:
        """Expire allocations whose duration has run out (lazily, on each request)."""
        now = self.clock()
        for lease in self.leases.values():
            if lease.view.status == "active" and lease.expires_s <= now:
                self.settle(lease, "expired", lease.expires_s)

    def settle(self, lease: Lease, status: str, at: float | None = None) -> None:
        """End an allocation and bill its lifetime per started second at the pool's hourly price."""
        lease.ended_s = self.clock() if at is None else at
        lease.view.status = status
        seconds = math.ceil(max(0.0, lease.ended_s - lease.created_s))
        lease.view.billed_usd = seconds * lease.view.price_per_hour / 3600
        self.billed_usd[lease.view.metadata.tenant_id] += lease.view.billed_usd
        self.counters[f"allocations_{status}"] += 1

    def lease(self, alloc_id: str, active: bool = False) -> Lease:
        lease = self.leases.get(alloc_id)
        if lease is None or lease.view.status == "released":
            raise HostedAIError(404, "allocation_not_found", f"no allocation {alloc_id!r}")
        if active and lease.view.status != "active":
            raise HostedAIError(410, lease.view.status, f"allocation {alloc_id} is {lease.view.status}")
        return lease

    def allocate(self, req: AllocateRequest) -> Lease:
        pool = self.pools.get(req.pool_id)
        if pool is None:
            raise HostedAIError(404, "pool_not_found", f"no pool {req.pool_id!r}; see GET /api/v1/pools")
        r = req.requirements
        why = [
            f"min_tflops {r.min_tflops} exceeds the pool's {pool.tflops}" * (r.min_tflops > pool.tflops),
            f"min_vram_mb {r.min_vram_mb} exceeds the pool's {pool.vram_mb}" * (r.min_vram_mb > pool.vram_mb),
            "max_vram_mb is below min_vram_mb" * (r.min_vram_mb > (r.max_vram_mb or r.min_vram_mb)),
            "this pool sells only preemptible allocations" * (pool.preemptible and not req.preemptible),
        ]
        if any(why):
            raise HostedAIError(422, "unsatisfiable_requirements", "; ".join(w for w in why if w))
        if self.in_use(pool.id) >= pool.capacity or self.rng.chance(self.config.faults.refuse_rate):
            raise HostedAIError(409, "insufficient_capacity", f"pool {pool.id} has no free vGPU")
        now = self.clock()
        view = Allocation(
            id=f"alloc-{self.rng.rng.getrandbits(48):012x}", pool_id=pool.id, status="active",
            vram_mb=min(pool.vram_mb, r.max_vram_mb or pool.vram_mb), tflops=pool.tflops,
            preemptible=pool.preemptible or req.preemptible, created_at=_iso(now),
            expires_at=_iso(now + req.duration_seconds), price_per_hour=pool.price_per_hour,
            metadata=req.metadata,
        )  # fmt: skip
        self.leases[view.id] = lease = Lease(view, now, now + req.duration_seconds)
        self.counters["allocations_created"] += 1
        return lease

    # -- inference and metrics ---------------------------------------------------------------
    async def infer(self, lease: Lease, req: InferenceRequest) -> InferenceResponse:
        text, completion = _fit(req.model, req.prompt, req.max_tokens)
        # One vGPU is time-sliced between the inferences running on it: concurrency stretches latency.
        latency = self.rng.latency_ms(completion, req.model) * (1 + lease.inflight)
        evicted = lease.view.preemptible and self.rng.chance(self.config.faults.preempt_rate)
        ran = latency * self.rng.rng.random() if evicted else latency  # eviction lands mid-inference
        lease.inflight += 1
        try:
            await self.sleep_ms(ran)
        finally:
            lease.inflight -= 1
        lease.busy_ms += ran
        if evicted and lease.view.status == "active":
            self.settle(lease, "preempted")  # billed per second up to the eviction
            raise HostedAIError(410, "preempted", f"allocation {lease.view.id} evicted after {ran:.0f} ms")
        if lease.view.status != "active":  # released or expired while the inference ran
            raise HostedAIError(410, lease.view.status, f"allocation {lease.view.id} is {lease.view.status}")
        lease.inferences += 1
        lease.latency_sum_ms += latency
        lease.models.add(req.model)
        self.counters["inferences"] += 1
        prompt = count_tokens(req.prompt)
        return InferenceResponse(
            id=f"inf-{self.counters['inferences']:08d}", allocation_id=lease.view.id, model=req.model,
            text=text, usage=InferenceUsage(prompt, completion, prompt + completion),
            latency_ms=round(latency, 3),
        )  # fmt: skip

    def metrics(self, lease: Lease) -> Metrics:
        life_ms = ((lease.ended_s or self.clock()) - lease.created_s) * 1000
        busy, n = lease.busy_ms, lease.inferences
        return Metrics(
            gpu_utilization=round(min(1.0, busy / max(life_ms, busy)), 4) if busy > 0 else 0.0,
            # loaded weights; past the vGPU's VRAM hosted.ai pages to system RAM, so cap at vram_mb
            memory_used_mb=min(lease.view.vram_mb, sum(_footprint_mb(m) for m in lease.models)),
            inference_count=n,
            average_latency_ms=round(lease.latency_sum_ms / n, 3) if n else 0.0,
        )
