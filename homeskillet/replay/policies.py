"""Selection policies: Homeskillet's covenant negotiation, and the naive baselines it is compared with.

``covenant`` is what the orchestrator does: bids that meet every hard term (``make_bid``), ranked
by ``rank``, the fallback chain walked step by step; a batch of strikes priced on one quote book
fills the best pool until its admission limit refuses, then the next (as loop-side admission
does live). The baselines are what a load balancer without covenants does: every pool that serves
the model is a candidate (no VRAM, preemption, cost or deadline terms, no fallback chain, one
retry elsewhere after a failure), chosen round-robin, by least load, or by lowest price. The
terms a baseline's choice breaks are still judged with ``make_bid`` and reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from ..broker import admits, bids_from_quotes
from ..covenant import Step, fallback_chain
from ..scoring import Ranked, make_bid, rank, serves
from ..wire import Bid, Covenant, Quote, Refusal

__all__ = ["POLICIES", "Cheapest", "LeastLoaded", "Policy", "RoundRobin", "policy"]

POLICIES = ("covenant", "round-robin", "least-loaded", "cheapest")
_ANY = [Step("any"), Step("fail")]


def _relaxed(cov: Covenant) -> Covenant:
    """The covenant as a naive balancer sees it: the model, nothing else."""
    r = msgspec.structs.replace(cov.resources, min_vram_mb=0, min_tflops=0.0, accelerator="any", gpu_models=[],
                                max_vram_mb=None)
    q = msgspec.structs.replace(cov.qos, preemptible=True, hard_deadline_ms=1 << 40)
    return msgspec.structs.replace(cov, resources=r, qos=q, cost=msgspec.structs.replace(
        cov.cost, max_usd_per_request=None, max_usd_per_hour=None))


class Policy:
    name = "covenant"
    naive = False

    def __init__(self) -> None:
        self._turn = 0
        self._relaxed: dict[str, Covenant] = {}  # by covenant_id: the same covenant every tick

    def chain(self, cov: Covenant) -> list[Step]:
        return _ANY if self.naive else fallback_chain(cov)

    def candidates(self, quotes: Iterable[Quote], step: Step, cov: Covenant, *, prompt_tokens: int,
                   max_tokens: int, exclude: Iterable[str], allow_degrade: bool, now: int) -> list[Ranked]:
        """The bids this policy chooses among, best first: the orchestrator's (``bids_from_quotes``),
        or a naive balancer's (every pool that serves the model, judged by the relaxed covenant)."""
        if not self.naive:
            return bids_from_quotes(quotes, step, cov, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                                    exclude=exclude, allow_degrade=allow_degrade, now=now)[0]
        relaxed = self._relaxed.get(cov.covenant_id)
        if relaxed is None:
            relaxed = self._relaxed[cov.covenant_id] = _relaxed(cov)
        excluded = set(exclude)
        bids = []
        model = relaxed.resources.model
        for q in quotes:
            if q.expires_at_ms < now or q.offer.pool in excluded or not admits(step, q.offer):
                continue
            if not serves(q.offer, model):
                continue  # make_bid's first refusal (without degrading), and the commonest: skip writing it
            b = make_bid(q.offer, relaxed, prompt_tokens=prompt_tokens, max_tokens=max_tokens, quote_seq=q.seq,
                         expires_at_ms=q.expires_at_ms)
            if not isinstance(b, Refusal):
                bids.append(b)
        return rank(bids, relaxed)

    def breaks(self, bid: Bid, cov: Covenant, *, prompt_tokens: int, max_tokens: int) -> str:
        """The covenant term striking ``bid`` breaks ("" if none; the covenant policy breaks none).
        Asked only of the bids a split chose: most candidates are never struck."""
        if not self.naive:
            return ""
        strict = make_bid(bid.offer, cov, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                          quote_seq=bid.quote_seq, expires_at_ms=bid.expires_at_ms)
        return strict.term if isinstance(strict, Refusal) and strict.term != "capacity" else ""

    def order(self, ranked: Sequence[Ranked]) -> list[Ranked]:
        return list(ranked)

    def split(self, ranked: Sequence[Ranked], n: int, room: Mapping[str, int]) -> list[tuple[Ranked, int]]:
        """How many of ``n`` alike strikes each candidate gets, within each pool's admission room."""
        out = []
        for r in self.order(ranked):
            take = min(n, max(0, room.get(r.bid.pool, 0)))
            if take:
                out.append((r, take))
                n -= take
            if not n:
                break
        return out


class Cheapest(Policy):
    name = "cheapest"
    naive = True

    def order(self, ranked: Sequence[Ranked]) -> list[Ranked]:
        return sorted(ranked, key=lambda r: (r.bid.price_usd, r.bid.pool))


class LeastLoaded(Policy):
    name = "least-loaded"
    naive = True

    def split(self, ranked: Sequence[Ranked], n: int, room: Mapping[str, int]) -> list[tuple[Ranked, int]]:
        # Water-filling: strikes go where the most room is left until the rooms are level.
        cands = sorted((r for r in ranked if room.get(r.bid.pool, 0) > 0), key=lambda r: (-room[r.bid.pool],
                                                                                            r.bid.pool))
        free = [room[r.bid.pool] for r in cands]
        left = min(n, sum(free))
        if not left:
            return []
        k, level = len(free), 0.0
        for k in range(1, len(free) + 1):
            level = (sum(free[:k]) - left) / k
            if k == len(free) or level >= free[k]:
                break
        floor = max(0, math.ceil(level))
        give = [max(0, f - floor) for f in free[:k]]
        for j in range(left - sum(give)):  # what the rounding left over, one more each
            give[j % k] += 1
        return [(r, g) for r, g in zip(cands, give, strict=False) if g > 0]


class RoundRobin(Policy):
    name = "round-robin"
    naive = True

    def split(self, ranked: Sequence[Ranked], n: int, room: Mapping[str, int]) -> list[tuple[Ranked, int]]:
        cands = sorted((r for r in ranked if room.get(r.bid.pool, 0) > 0), key=lambda r: r.bid.pool)
        if not cands:
            return []
        start = self._turn % len(cands)
        self._turn += 1
        cands = cands[start:] + cands[:start]
        got = dict.fromkeys((r.bid.pool for r in cands), 0)
        while n > 0:
            open_ = [r for r in cands if got[r.bid.pool] < room[r.bid.pool]]
            if not open_:
                break
            share, extra = divmod(n, len(open_))
            for j, r in enumerate(open_):
                give = min(share + (1 if j < extra else 0), room[r.bid.pool] - got[r.bid.pool])
                got[r.bid.pool] += give
                n -= give
        return [(r, got[r.bid.pool]) for r in cands if got[r.bid.pool] > 0]


def policy(name: str) -> Policy:
    """A fresh policy by name (policies keep a little state, such as round-robin's turn)."""
    match name:
        case "covenant":
            return Policy()
        case "cheapest":
            return Cheapest()
        case "least-loaded":
            return LeastLoaded()
        case "round-robin":
            return RoundRobin()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
