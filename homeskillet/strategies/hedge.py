"""Hedged strikes: when the first pool is late past a percentile of its own track record, a
duplicate goes to the next-best pool; the first result wins and the loser is cancelled.

The loser is charged what its provider bills for the part that ran (the pool host answers a
cancel with ``StrikeCancelled.billed_usd``); a loser that finished before the cancel reached it
was billed in full, and is charged in full. Hedging needs standing quotes (a Contract Net award
binds one pool) and a second pool; otherwise the strike runs unhedged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from ..errors import Cancelled, StrikeFailed
from ..scoring import Ranked
from ..telemetry import HEDGES
from ..wire import Covenant, Hedge, Offer, Strike, StrikeOk

__all__ = ["Hedged", "Loser", "backup_for", "hedge_delay_ms", "hedged_execute"]

Execute = Callable[[Strike, float], Awaitable[tuple[StrikeOk, float]]]


def hedge_delay_ms(offer: Offer, policy: Hedge, cov: Covenant) -> float:
    """How long to wait for the first pool before the duplicate: the configured percentile of
    its recorded latency, or, until it has ``min_samples`` verdicts, the covenant's target."""
    if offer.latency_samples >= policy.min_samples:
        observed = float(getattr(offer, f"latency_p{policy.percentile}_ms"))
        if observed > 0:
            return observed
    return float(cov.qos.latency_target_ms)


def backup_for(cov: Covenant, ranked: Sequence[Ranked], negotiated: bool) -> Ranked | None:
    """The bid a hedge would go to: the best one on another pool (None: do not hedge)."""
    if not cov.strategy.hedge.enabled or negotiated or len(ranked) < 2:
        return None
    first = ranked[0].bid.pool
    return next((r for r in ranked[1:] if r.bid.pool != first), None)


class Loser(msgspec.Struct, kw_only=True):
    strike: Strike
    pool: str
    cost_usd: float
    latency_ms: float
    note: str


class Hedged(msgspec.Struct, kw_only=True):
    winner: int  # 0: the first pool, 1: the hedge
    ok: StrikeOk
    elapsed_ms: float
    fired_after_ms: float | None  # None: the first pool answered before the hedge was due
    loser: Loser | None = None


async def hedged_execute(execute: Execute, cancel: Callable[[Strike], Awaitable[None]],
                         first: tuple[Strike, float], second: tuple[Strike, float], delay_ms: float,
                         *, bill_wait_s: float = 2.0) -> Hedged:
    """Run ``first``; past ``delay_ms`` also run ``second``; keep the first success, cancel the
    other and wait (at most ``bill_wait_s``) for what it is billed."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    a = asyncio.ensure_future(execute(*first))
    done, _ = await asyncio.wait({a}, timeout=delay_ms / 1000.0)
    if a in done:
        ok, elapsed = a.result()  # a failure raises here, before any hedge: the caller falls back
        return Hedged(winner=0, ok=ok, elapsed_ms=elapsed, fired_after_ms=None)
    fired = (loop.time() - t0) * 1000.0
    HEDGES.labels(outcome="fired").inc()
    b = asyncio.ensure_future(execute(*second))
    tasks, pending = [a, b], {a, b}
    errors: list[BaseException] = []
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in sorted(done, key=tasks.index):
            exc = t.exception()
            if exc is not None:
                errors.append(exc)
                continue
            won = tasks.index(t)
            ok, elapsed = t.result()
            other = tasks[1 - won]
            strike = (first, second)[1 - won][0]
            HEDGES.labels(outcome="hedge_won" if won else "primary_won").inc()
            loser = await _stop(other, strike, cancel, bill_wait_s, loop.time() - t0)
            if won == 1:
                elapsed = fired + elapsed  # the query waited for the first pool before the hedge ran
            return Hedged(winner=won, ok=ok, elapsed_ms=elapsed, fired_after_ms=fired, loser=loser)
    raise StrikeFailed("both hedged strikes failed: " + "; ".join(str(e) for e in errors))


async def _stop(task: asyncio.Future[tuple[StrikeOk, float]], strike: Strike,
                cancel: Callable[[Strike], Awaitable[None]], bill_wait_s: float, since_s: float) -> Loser:
    if not task.done():
        with contextlib.suppress(Exception):
            await cancel(strike)
    try:
        ok, elapsed = await asyncio.wait_for(asyncio.shield(task), bill_wait_s)
    except Cancelled as exc:
        return Loser(strike=strike, pool=strike.pool, cost_usd=exc.billed_usd, latency_ms=since_s * 1000.0,
                     note=f"lost the hedge race; cancelled, billed ${exc.billed_usd:.6f} for the part that ran")
    except TimeoutError:
        return Loser(strike=strike, pool=strike.pool, cost_usd=0.0, latency_ms=since_s * 1000.0,
                     note="lost the hedge race; cancel sent, the bill settles when the pool answers")
    except Exception as exc:
        return Loser(strike=strike, pool=strike.pool, cost_usd=0.0, latency_ms=since_s * 1000.0,
                     note=f"lost the hedge race; it failed: {exc}")
    return Loser(strike=strike, pool=strike.pool, cost_usd=ok.cost_usd, latency_ms=elapsed,
                 note="lost the hedge race; finished before the cancel arrived, billed in full")
