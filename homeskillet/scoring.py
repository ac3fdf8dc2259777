"""Bids against covenants: pure functions, shared by standing quotes and Contract Net.

``make_bid`` turns a pool's offer into a binding Bid for one fragment or a Refusal naming the
covenant term it cannot meet. A pool agent calls it to answer a call for proposals; the broker
calls it on a standing quote. ``rank`` orders the bids that meet every hard term by a score that
weighs price against predicted latency by the covenant's priority, and the pool's track record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .wire import Bid, Covenant, Offer, Refusal

__all__ = ["Prices", "Ranked", "hold_usd", "make_bid", "model_served", "predicted_ms", "price_usd", "rank", "serves"]


def model_served(models: Sequence[str], model: str) -> bool:
    """``"*"`` serves any model; ``"base+*"`` any LoRA adapter over ``base``; else an exact name."""
    return any(m == "*" or m == model or (m.endswith("+*") and model.startswith(m[:-1])) for m in models)


def serves(offer: Offer, model: str) -> bool:
    return model_served(offer.models, model)


def predicted_ms(offer: Offer, max_tokens: int) -> tuple[float, float]:
    """(time to first token, total) for a fragment, with queueing behind busy slots."""
    service = offer.start_ms + offer.ms_per_token * max_tokens
    waits = offer.queue_depth / max(1, offer.free_slots) if offer.free_slots > 0 else offer.queue_depth + 1
    start = offer.start_ms + waits * service
    return start, start + offer.ms_per_token * max_tokens


class Prices(Protocol):
    """What a price is made of: an Offer has it, and so has a PoolSpec."""

    @property
    def usd_per_mtok_in(self) -> float: ...
    @property
    def usd_per_mtok_out(self) -> float: ...
    @property
    def usd_per_hour(self) -> float: ...


def price_usd(offer: Prices, prompt_tokens: int, completion_tokens: int, seconds: float) -> float:
    """Token-priced and time-priced pools in one formula (one of the two terms is usually 0)."""
    per_token = (prompt_tokens * offer.usd_per_mtok_in + completion_tokens * offer.usd_per_mtok_out) / 1e6
    return per_token + offer.usd_per_hour * seconds / 3600.0


def hold_usd(offer: Prices, prompt_tokens: int, max_tokens: int, seconds_left: float) -> float:
    """The most a strike can cost, which is what a budget holds for it: the prompt and every token
    it may generate, and the hourly price for all the time it may run (a strike runs no longer
    than its hard deadline: the dispatcher gives up then, and a result that comes later is
    neither used nor charged). Not the pool's p99 duration: under a burst, strikes wait for slots
    far past any p99 measured before it, and a hold that short would leave the excess to chance."""
    return price_usd(offer, prompt_tokens, max_tokens, max(0.0, seconds_left))


def make_bid(
    offer: Offer,
    cov: Covenant,
    *,
    prompt_tokens: int,
    max_tokens: int,
    quote_seq: int,
    expires_at_ms: int,
    allow_degrade: bool = False,
    cfp_id: str = "",
) -> Bid | Refusal:
    """The offer as a bid under ``cov``, or a refusal naming the first unmet term."""

    def refuse(term: str, detail: str) -> Refusal:
        return Refusal(cfp_id=cfp_id, pool=offer.pool, term=term, detail=detail)

    r, q, c = cov.resources, cov.qos, cov.cost
    model = r.model
    degraded = False
    if not serves(offer, model):
        alt = next((m for m in cov.fallback.degrade_to if serves(offer, m)), None) if allow_degrade else None
        if alt is None:
            return refuse("resources.model", f"does not serve {model!r}")
        model, degraded = alt, True
    # Resource minimums describe the covenant's model; a permitted smaller model is exempt.
    if not degraded:
        if r.accelerator != "any" and offer.accelerator != r.accelerator:
            return refuse("resources.accelerator", f"offers {offer.accelerator}, needs {r.accelerator}")
        # A hosted model API runs the model on hardware it sizes itself: VRAM and TFLOPS are its concern.
        hosted = offer.accelerator == "api"
        if offer.vram_mb < r.min_vram_mb and not hosted:
            return refuse("resources.min_vram_mb", f"offers {offer.vram_mb} MB, needs {r.min_vram_mb} MB")
        if offer.tflops < r.min_tflops and not hosted:
            return refuse("resources.min_tflops", f"offers {offer.tflops:g} TFLOPS, needs {r.min_tflops:g}")
        if r.gpu_models and offer.gpu_model not in r.gpu_models:
            return refuse("resources.gpu_models", f"offers {offer.gpu_model or 'no GPU'}, allowed {r.gpu_models}")
    if offer.preemptible and not q.preemptible:
        return refuse("qos.preemptible", "capacity is preemptible; the covenant forbids it")
    if offer.context_tokens and prompt_tokens + max_tokens > offer.context_tokens:
        return refuse("context_tokens", f"window {offer.context_tokens} tokens; the fragment needs "
                                        f"{prompt_tokens} + {max_tokens}")
    if offer.free_slots <= 0 and offer.queue_depth <= 0:
        return refuse("capacity", "no free capacity")
    start, total = predicted_ms(offer, max_tokens)
    price = price_usd(offer, prompt_tokens, max_tokens, total / 1000.0)
    if c.max_usd_per_request is not None and price > c.max_usd_per_request:
        return refuse("cost.max_usd_per_request", f"bids ${price:.6f}, ceiling ${c.max_usd_per_request:g}")
    if c.max_usd_per_hour is not None and offer.usd_per_hour > c.max_usd_per_hour:
        return refuse("cost.max_usd_per_hour", f"costs ${offer.usd_per_hour:g}/h, ceiling ${c.max_usd_per_hour:g}/h")
    if total > q.hard_deadline_ms:
        return refuse("qos.hard_deadline_ms", f"predicts {total:.0f} ms, deadline {q.hard_deadline_ms} ms")
    tps = 1000.0 / offer.ms_per_token if offer.ms_per_token > 0 else 0.0
    return Bid(
        cfp_id=cfp_id,
        pool=offer.pool,
        offer=offer,
        model=model,
        price_usd=price,
        predicted_start_ms=start,
        predicted_total_ms=total,
        tokens_per_s=tps,
        quote_seq=quote_seq,
        expires_at_ms=expires_at_ms,
    )


class Ranked:
    """A bid with its score (lower wins) and a sentence saying why. The sentence is written only
    when asked for: only the winner's is ever read, and formatting it cost more than scoring."""

    __slots__ = ("_why", "bid", "cost_x", "late", "score", "warm")

    def __init__(self, bid: Bid, score: float, why: str | None = None, *, cost_x: float = 1.0, late: bool = False,
                 warm: bool = False) -> None:
        self.bid, self.score, self.cost_x, self.late, self.warm = bid, score, cost_x, late, warm
        self._why = why  # None: written from the figures on first read

    @property
    def why(self) -> str:
        if self._why is None:
            b = self.bid
            self._why = (
                f"score {self.score:.2f}: ${b.price_usd:.6f} ({self.cost_x:.2f}x cheapest), "
                f"{b.predicted_total_ms:.0f} ms predicted ({'past' if self.late else 'within'} target), "
                f"reliability {b.offer.reliability:.2f}{', warm' if self.warm else ''}"
            )
        return self._why


def rank(bids: Sequence[Bid], cov: Covenant) -> list[Ranked]:
    """Order bids best first. Price and latency count relative to the best bid, weighted by
    priority (0 = cheapest wins, 100 = fastest wins); unreliable pools and bids past the latency
    target pay a penalty; a warm model is a small bonus."""
    if not bids:
        return []
    w_lat = cov.qos.priority / 100.0
    w_cost = 1.0 - w_lat
    eps = 1e-9
    cheapest = min([b.price_usd for b in bids])
    fastest = min([b.predicted_total_ms for b in bids])
    out = []
    for b in bids:
        cost_x = (b.price_usd + eps) / (cheapest + eps)
        lat_x = (b.predicted_total_ms + 1.0) / (fastest + 1.0)
        score = w_cost * cost_x + w_lat * lat_x + 2.0 * (1.0 - b.offer.reliability)
        late = b.predicted_total_ms > cov.qos.latency_target_ms
        score += 1.0 if late else 0.0
        warm = b.model in b.offer.warm_models
        score -= 0.05 if warm else 0.0
        out.append(Ranked(b, score, cost_x=cost_x, late=late, warm=warm))
    out.sort(key=_rank_key)
    return out


def _rank_key(r: Ranked) -> tuple[float, str]:
    return r.score, r.bid.pool
