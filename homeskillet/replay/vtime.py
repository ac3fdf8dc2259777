"""Virtual-time pools: strikes as numpy records, an exact FIFO multi-server queue, seeded outcomes.

A pool in virtual time is the pool agent's real state (``pools.PoolState``: its offer, track
record and warm models, so quotes and bids come from the same code as live) plus what the
provider would do: ``capacity`` servers (accelerators × slots), a FIFO queue in front of them,
strike durations from the scenario's latency model, failures, preemptions and faults.

The queue is exact for FIFO service by arrival: with ``c`` servers each taking the next strike
when free, the servers' free times after any prefix of strikes are the ``c`` latest completion
times so far (each new strike replaces the earliest-free server, and ends no earlier than it),
so the in-flight completion times are the whole queue state. When a batch fits in the free
servers every strike starts at once (vectorised); otherwise a heap walks the batch.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ..config import PoolSpec
from ..pools import PoolState
from ..wire import Quote
from .scenario import FleetPool

__all__ = ["FAILED", "LATE", "LOST", "OK", "PREEMPTED", "Items", "VPool", "pool_spec"]

OK, FAILED, PREEMPTED, LOST, LATE = 0, 1, 2, 3, 4
_FAST_FAIL_S = 0.02  # a provider's 503 comes back about this fast


# One record per fragment; 8-byte fields first, and aligned, so every field view is aligned (numpy's
# fast loops). The struck-only fields (price … broke) are meaningless while a fragment waits.
_FIELDS = np.dtype([("q", np.int64), ("arr", np.float64), ("ready", np.float64), ("excl", np.uint64),
                    ("park", np.float64), ("price", np.float64), ("start", np.float64), ("end", np.float64),
                    ("coh", np.int32), ("ten", np.int32), ("step", np.int16), ("fb", np.int8), ("out", np.int8),
                    ("broke", np.int8)], align=True)
_RECORD = np.dtype((np.void, _FIELDS.itemsize))


class Items:
    """Fragments as records: waiting to be negotiated, or struck and in flight at a pool.

    Batches are small, so numpy's per-call cost dominates: one call to take a subset or join
    batches (not one per column). Records are selected and joined as raw bytes (``v``), since
    numpy's structured-dtype path for those is many times slower; ``a`` reads the same memory as
    fields."""

    __slots__ = ("a", "v")

    def __init__(self, v: np.ndarray) -> None:
        self.v = v  # contiguous, of _RECORD
        self.a = np.frombuffer(v, _FIELDS)

    @classmethod
    def zeros(cls, n: int = 0) -> Items:
        return cls(np.zeros(n, dtype=_RECORD))

    def __len__(self) -> int:
        return len(self.v)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.a[name]

    def __setitem__(self, name: str, value: np.ndarray | float) -> None:
        self.a[name] = value

    def take(self, sel: np.ndarray | slice) -> Items:
        """A copy (never a view), so setting a field of the part leaves the whole alone."""
        part = self.v[sel]
        return Items(part.copy() if isinstance(sel, slice) else part)

    @staticmethod
    def concat(parts: list[Items]) -> Items:
        records = [p.v for p in parts if len(p.v)]
        if len(records) == 1:
            return parts[0] if len(parts) == 1 else Items(records[0])
        return Items(np.concatenate(records)) if records else Items.zeros()


def pool_spec(fp: FleetPool) -> PoolSpec:
    """The PoolSpec a live pool host would run this fleet entry with."""
    per_slot_hour = fp.usd_per_hour / fp.slots_per_accelerator
    return PoolSpec(name=fp.name, provider=fp.simulates, pool_class=fp.pool_class, models=list(fp.models),
                    accelerator=fp.accelerator, gpu_model=fp.gpu_model, vram_mb=fp.vram_mb, tflops=fp.tflops,
                    region=fp.region, preemptible=fp.preemptible, usd_per_mtok_in=fp.usd_per_mtok_in,
                    usd_per_mtok_out=fp.usd_per_mtok_out, usd_per_hour=per_slot_hour, start_ms=fp.start_ms,
                    ms_per_token=fp.ms_per_token, capacity=fp.capacity,
                    queue_limit=fp.capacity if fp.queue_limit < 0 else fp.queue_limit)


class VPool:
    def __init__(self, index: int, fp: FleetPool, rng: np.random.Generator, overhead_s: float) -> None:
        self.index, self.fp, self.rng, self.overhead_s = index, fp, rng, overhead_s
        self.spec = pool_spec(fp)
        self.state = PoolState(self.spec, fp.simulates)
        self.bit = np.uint64(1) << np.uint64(index)
        self.capacity = self.spec.capacity
        self.limit = self.spec.capacity + self.spec.queue_limit
        self.inflight = Items.zeros()
        self.next_end = math.inf  # never above the earliest end in flight: most ticks nothing ends
        self.outages: list[tuple[float, float]] = []
        self.spikes: list[tuple[float, float, float]] = []
        self.dead: list[tuple[float, float]] = []  # worker killed: (from, until restart)
        self.busy_s = 0.0
        self.strikes = self.failures = self.preemptions = self.lost = 0
        self.cost_usd = 0.0

    def alive(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.dead)

    def in_flight(self, t: float) -> int:
        if self.next_end > t:
            return len(self.inflight)
        return int(np.count_nonzero(self.inflight["end"] > t))

    def quote(self, t: float, ttl_ms: int) -> Quote:
        t_ms = int(t * 1000)
        return Quote(offer=self.state.offer(self.in_flight(t)), seq=self.state.seq, issued_at_ms=t_ms,
                     expires_at_ms=t_ms + ttl_ms)

    # --- striking -------------------------------------------------------------------------------

    def _service_s(self, n: int, max_tokens: np.ndarray, at: np.ndarray) -> np.ndarray:
        fp = self.fp
        ms = fp.start_ms + fp.ms_per_token * max_tokens
        if fp.jitter_sigma > 0:
            ms = ms * self.rng.lognormal(0.0, fp.jitter_sigma, n)
        if fp.tail_rate > 0:
            ms = np.where(self.rng.uniform(size=n) < fp.tail_rate, ms * fp.tail_factor, ms)
        for a, b, factor in self.spikes:
            ms = np.where((at >= a) & (at < b), ms * factor, ms)
        return ms / 1000.0

    def _starts(self, admit: np.ndarray, service: np.ndarray, t: float) -> np.ndarray:
        ends = self.inflight["end"]
        busy = ends[ends > t] if len(ends) else ends
        if len(busy) + len(admit) <= self.capacity:
            return admit  # every strike finds a free server
        top = np.sort(busy)[-self.capacity:] if len(busy) > self.capacity else np.sort(busy)
        heap = [-math.inf] * (self.capacity - len(top)) + top.tolist()
        heapq.heapify(heap)
        starts = np.empty_like(admit)
        replace = heapq.heapreplace
        for i, (a, s) in enumerate(zip(admit.tolist(), service.tolist(), strict=True)):
            free = heap[0]
            st = a if a > free else free
            starts[i] = st
            replace(heap, st + s)
        return starts

    def strike(self, items: Items, max_tokens: np.ndarray, deadline: np.ndarray, t: float) -> None:
        """Admit strikes (priced: ``price`` and ``broke`` set) and decide how each one ends."""
        n = len(items)
        order = np.argsort(items["ready"], kind="stable")
        items, max_tokens, deadline = items.take(order), max_tokens[order], deadline[order]
        admit = items["ready"] + self.overhead_s
        service = self._service_s(n, max_tokens, admit)
        start = self._starts(admit, service, t)
        end = start + service
        out = np.zeros(n, dtype=np.int8)
        for a, b in self.outages:
            hit = (start >= a) & (start < b)
            out[hit], end[hit] = FAILED, start[hit] + _FAST_FAIL_S
        u = self.rng.uniform(size=n)
        if self.fp.failure_rate > 0:
            hit = (out == OK) & (u < self.fp.failure_rate)
            out[hit], end[hit] = FAILED, start[hit] + service[hit] * self.rng.uniform(size=int(hit.sum()))
        if self.fp.preempt_rate > 0:
            hit = (out == OK) & (u >= self.fp.failure_rate) & (u < self.fp.failure_rate + self.fp.preempt_rate)
            out[hit], end[hit] = PREEMPTED, start[hit] + service[hit] * self.rng.uniform(size=int(hit.sum()))
        late = end > deadline
        out[late], end[late] = LATE, deadline[late]
        items["start"], items["end"], items["out"], items["ready"] = start, end, out, admit - self.overhead_s
        self.inflight = Items.concat([self.inflight, items])
        self.next_end = min(self.next_end, float(end.min()))
        self.strikes += n

    # --- faults ---------------------------------------------------------------------------------

    def evict(self, at: float, share: float, outcome: int, delay_s: float = 0.0) -> int:
        """Strikes running at ``at``: a share of them end there (preempted, or lost with a worker)."""
        f = self.inflight
        if not len(f):
            return 0
        running = np.flatnonzero((f["start"] <= at) & (f["end"] > at) & (f["out"] == OK))
        if share < 1:
            running = running[self.rng.uniform(size=len(running)) < share]
        queued = np.flatnonzero((f["start"] > at) & (f["out"] == OK)) if outcome == LOST else running[:0]
        hit = np.concatenate([running, queued])
        f["out"][hit] = outcome
        f["end"][hit] = at + delay_s
        f["start"][queued] = at  # they never ran
        self.next_end = min(self.next_end, at + delay_s)
        return len(hit)

    def done(self, horizon: float) -> Items:
        """Strikes that ended before ``horizon``, removed from flight."""
        f = self.inflight
        if self.next_end >= horizon:
            return Items.zeros()
        over = f["end"] < horizon
        finished = f.take(over)
        self.inflight = f.take(~over)
        self.next_end = float(self.inflight["end"].min()) if len(self.inflight) else math.inf
        self.busy_s += float((finished["end"] - finished["start"]).sum())
        return finished
