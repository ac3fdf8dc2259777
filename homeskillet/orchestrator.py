"""The query state machine: analyse → negotiate → strike → fuse. Lives on the I/O loop.

Each fragment walks its covenant's fallback chain. Within a step the best bid is struck; a strike
that fails (lost, silent, refused, preempted) excludes that pool and the next bid is tried; an
exhausted step moves the fragment to the next step; ``queue`` waits for new quotes up to the
covenant's max wait; at the end the query fails with an error naming every unmet term. Every
accepted query ends in an Answer or an explicit HomeskilletError; nothing is dropped.

A streamed query (``serve(..., stream=sink)``) passes each strike's chunks on as they arrive
(``streaming.py``); a strike that fails after some of its text reached the client is not re-struck
(``StreamInterrupted``), one that fails before is, as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client as NATS

from .analyze import analyze
from .broker import Negotiator
from .budgets import Budgets
from .cache import ResultCache
from .covenant import CovenantBook, Step, fallback_chain
from .distill.distiller import Distiller
from .errors import (
    BudgetExceeded,
    Cancelled,
    DeadlineExceeded,
    HomeskilletError,
    LeaseRejected,
    NoPoolError,
    Preempted,
    StreamInterrupted,
    StrikeFailed,
    Unmet,
)
from .fuse import fuse
from .ids import new_id
from .ledger import Hold, Release, Settle
from .offload import off_loop, query_chars
from .parking import ParkingLot
from .scoring import Ranked, hold_usd
from .strategies import Served, backup_for, from_logprob, hedge_delay_ms, hedged_execute, plan, serve_plan
from .streaming import PartStream, TextSink
from .strike import Dispatcher, OnChunk
from .subjects import Subjects
from .supervisor import Supervised
from .telemetry import FALLBACKS, POOL_LOSS_USD, get_logger, labelled
from .wire import (
    Answer,
    CancelStrike,
    Covenant,
    Fragment,
    FragmentOutcome,
    Offer,
    Query,
    Reservation,
    Strike,
    StrikeCancelled,
    StrikeFailure,
    StrikeOk,
    StrikePreemption,
    StrikeResult,
    Verdict,
    encode,
)

__all__ = ["Orchestrator", "cap_charge", "fallback_plan", "judge"]

log = get_logger("homeskillet.orchestrator")


def judge(cov: Covenant, ok: StrikeOk, elapsed_ms: float) -> list[str]:
    """The covenant terms a finished strike broke (empty: kept)."""
    broken = []
    if cov.cost.max_usd_per_request is not None and ok.cost_usd > cov.cost.max_usd_per_request:
        broken.append("cost.max_usd_per_request")
    if elapsed_ms > cov.qos.latency_target_ms:
        broken.append("qos.latency_target_ms")
    if elapsed_ms > cov.qos.hard_deadline_ms:
        broken.append("qos.hard_deadline_ms")
    return broken


def fallback_plan(chain: Sequence[Step]) -> list[tuple[Step, bool]]:
    """Pure: each step of the walk with whether it may serve a covenant-allowed smaller model
    (every step after the primary may). A queue step retries the strikeable steps before it, under
    the same rule. The orchestrator and the virtual-time simulation both walk this."""
    return [(step, i > 0) for i, step in enumerate(chain)]


class Orchestrator:
    def __init__(self, nc: NATS, subjects: Subjects, covenants: CovenantBook, negotiator: Negotiator,
                 dispatcher: Dispatcher, ledger: Supervised, *, max_fragments: int = 16,
                 parking: ParkingLot | None = None, budgets: Budgets | None = None,
                 cache: ResultCache | None = None, distiller: Distiller | None = None) -> None:
        self.nc, self.subjects, self.covenants = nc, subjects, covenants
        self.negotiator, self.dispatcher, self.ledger = negotiator, dispatcher, ledger
        self.budgets = budgets  # the tenants' shared daily/monthly budgets (JetStream KV)
        self.max_fragments = max_fragments
        self.parking = parking  # durable queue step; None: parked fragments live in memory only
        self.cache = cache if cache is not None else ResultCache()
        self.distiller = distiller  # knowledge distillation for [distill] covenants; None: off
        self.parked: dict[str, Fragment] = {}  # fragments waiting in the queue step, by fragment_id
        self._replies: dict[str, str] = {}  # query_id -> the caller's NATS reply subject, while served

    async def serve(self, query: Query, reply: str = "", stream: TextSink | None = None) -> Answer:
        """Serve ``query``; ``reply`` (the caller's NATS inbox) lets a restarted orchestrator answer
        a query whose fragment was parked in the durable queue; ``stream`` gets the answer's text
        as the strikes produce it."""
        self._replies[query.query_id] = reply
        if reply and self.parking is not None:
            await self.parking.accept(query, reply)  # recorded: a peer answers it if this process dies
        try:
            answer = await self._serve(query, stream)
        except HomeskilletError:
            await self._unpark(query.query_id)
            raise
        finally:
            self._replies.pop(query.query_id, None)
        await self._unpark(query.query_id)
        return answer

    async def _unpark(self, query_id: str) -> None:
        if self.parking is not None:
            await self.parking.done(query_id)

    async def _serve(self, query: Query, stream: TextSink | None = None) -> Answer:
        """Plan (covenant, complexity, decomposition; strategies/serving.py), serve the plan
        through a ``_QueryRun`` (cache, cascade, ensemble, map → reduce), fuse."""
        t0 = time.monotonic()
        # Pure given the quote book's snapshot: off the loop for a long prompt (offload.py)
        p = await off_loop(query_chars(query), plan, query, self.covenants, self.negotiator.pools(),
                           max_fragments=self.max_fragments)
        cov = p.cov
        run = _QueryRun(self, query, cov, t0 + cov.qos.hard_deadline_ms / 1000.0)
        result = await serve_plan(run, p, self.cache, stream, t0, self.distiller)
        return Answer(
            query_id=query.query_id, tenant=query.tenant, text=result.text, covenant=cov.name,
            covenant_id=cov.covenant_id, fusion=cov.fusion, fragments=result.outcomes,
            cost_usd=sum(o.cost_usd for o in result.outcomes), latency_ms=(time.monotonic() - t0) * 1000.0,
            complexity=p.assessment.complexity, strategy=p.describe(streamed=stream is not None),
            ttft_ms=result.ttft_ms,
        )

    async def serve_on(self, query: Query, res: Reservation) -> Answer:
        """Serve ``query`` on a reservation's pool and allocation: no negotiation, no fallback (the
        reservation is the contract); a failed strike is an explicit error naming the pool."""
        t0 = time.monotonic()
        if not query.model and not query.covenant and res.model:
            query = msgspec.structs.replace(query, model=res.model)
        cov = self.covenants.resolve(query)
        fragments = await off_loop(query_chars(query), analyze, query, cov, max_fragments=self.max_fragments)
        deadline = t0 + cov.qos.hard_deadline_ms / 1000.0
        # A strike on an allocation costs nothing itself (the reservation pays by the hour): it
        # holds 0. On a pinned pool it is priced like any strike and holds its worst case.
        rates = next((o for o in self.negotiator.pools() if o.pool == res.pool), None) or _Rates(res.usd_per_hour)

        async def one(frag: Fragment) -> tuple[FragmentOutcome, str]:
            left = deadline - time.monotonic()
            hold = 0.0 if res.allocation is not None else hold_usd(rates, frag.prompt_tokens, frag.max_tokens, left)
            strike = Strike(strike_id=new_id(), query_id=query.query_id, tenant=query.tenant,
                            covenant_id=cov.covenant_id, pool=res.pool, fragment=frag,
                            model=res.model or cov.resources.model, allocation=res.allocation,
                            max_price_usd=hold, deadline_ms=int((time.time() + left) * 1000),
                            trace_id=query.trace_id)
            try:
                ok, elapsed = await self.execute(strike, cov, hold, deadline)
            except (StrikeFailed, LeaseRejected) as exc:
                exc.tried = (f"{res.pool} (reservation {res.reservation_id}): {exc.message}",)
                raise
            broken = judge(cov, ok, elapsed)
            return FragmentOutcome(
                fragment_id=frag.fragment_id, index=frag.index, pool=res.pool, strike_id=strike.strike_id,
                model=ok.model, step=f"reservation {res.reservation_id}", why="reserved", cost_usd=ok.cost_usd,
                latency_ms=elapsed, prompt_tokens=ok.prompt_tokens, completion_tokens=ok.completion_tokens,
                kept=not broken, broken_terms=broken,
            ), ok.text

        results = await asyncio.gather(*(one(f) for f in fragments))
        outcomes = [r[0] for r in results]
        return Answer(
            query_id=query.query_id, tenant=query.tenant, text=fuse(cov.fusion, fragments, [r[1] for r in results]),
            covenant=cov.name, covenant_id=cov.covenant_id, fusion=cov.fusion, fragments=outcomes,
            cost_usd=sum(o.cost_usd for o in outcomes), latency_ms=(time.monotonic() - t0) * 1000.0,
        )

    async def _candidates(self, step: Step, cov: Covenant, frag: Fragment, exclude: set[str],
                          degrade: bool) -> tuple[list[Ranked], list[Unmet], str | None]:
        if cov.negotiation == "quotes":
            ranked, unmet = self.negotiator.from_quotes(step, cov, frag, exclude, degrade)
            if ranked or self.negotiator.covers(step):
                return ranked, unmet, None
        # The covenant asks for it, or no pool of this step has quoted yet: a full Contract Net round.
        ranked, unmet, cfp_id = await self.negotiator.contract_net(step, cov, frag, exclude, degrade)
        return ranked, unmet, cfp_id

    async def _serve_fragment(self, query: Query, cov: Covenant, frag: Fragment, deadline: float,
                              stream: PartStream | None = None) -> Served:
        chain = fallback_chain(cov)
        tried: list[str] = []
        unmet: list[Unmet] = []
        steps_tried: list[str] = []
        for i, (step, degrade) in enumerate(fallback_plan(chain)):
            if step.kind == "fail":
                break
            steps_tried.append(str(step))
            if step.kind == "queue":
                served = await self._queue(query, cov, frag, chain[:i], deadline, tried, unmet, stream)
                if served is not None:
                    return served
                continue
            served = await self._try_step(query, cov, frag, step, degrade, deadline, tried, unmet, stream)
            if served is not None:
                return served
            labelled(FALLBACKS, step=str(step), reason="exhausted").inc()
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"query {query.query_id}: covenant {cov.name!r} hard deadline "
                                   f"{cov.qos.hard_deadline_ms} ms passed", term="qos.hard_deadline_ms",
                                   tried=tuple(tried))
        raise NoPoolError(cov.name, unmet, tuple(tried or steps_tried))

    async def _try_step(self, query: Query, cov: Covenant, frag: Fragment, step: Step, degrade: bool,
                        deadline: float, tried: list[str], unmet: list[Unmet],
                        stream: PartStream | None = None) -> Served | None:
        exclude: set[str] = set()
        while time.monotonic() < deadline:
            ranked, refusals, cfp_id = await self._candidates(step, cov, frag, exclude, degrade)
            unmet.extend(refusals)
            if not ranked:
                if not exclude:  # the step offered nothing at all: say why, once
                    why = "; ".join(sorted({f"{u.term} ({u.detail})" for u in refusals})) or "no pool of this kind"
                    tried.append(f"step {step}: {why}")
                return None
            choice = ranked[0]
            pool = choice.bid.pool
            strike_id = new_id()
            lease_id = None
            losers: list[FragmentOutcome] = []
            try:
                if cfp_id is not None:
                    lease = await self.negotiator.award(cfp_id, choice, ranked[1:], query.query_id, strike_id)
                    lease_id = lease.lease_id
                strike = self._strike(query, cov, frag, choice, strike_id, lease_id, deadline)
                backup = backup_for(cov, ranked, cfp_id is not None)
                if backup is None:
                    ok, elapsed = await self.execute(strike, cov, strike.max_price_usd, deadline,
                                                     stream.emit if stream is not None else None)
                else:  # hedged: two strikes race, so the fragment's text comes whole (buffered)
                    ok, elapsed, choice, strike, losers = await self._hedged(query, cov, frag, strike, choice,
                                                                             backup, deadline)
                    pool, strike_id = choice.bid.pool, strike.strike_id
            except (StrikeFailed, LeaseRejected) as exc:
                tried.append(f"{pool}: {exc.message}")
                if stream is not None:
                    if stream.delivered:
                        raise StreamInterrupted(
                            f"query {query.query_id}: {pool} failed after {len(stream.sent)} characters of its "
                            f"answer were streamed ({exc.message}); it is not re-struck elsewhere, so the client "
                            "never gets a second answer after the first's start: ask again (a query that does "
                            "not stream fails over instead)", tried=tuple(tried)) from exc
                    stream.reset()  # nothing of it reached the client: fail over as usual
                exclude.add(pool)
                if isinstance(exc, StrikeFailed) and not isinstance(exc, Preempted):
                    self.negotiator.mark_down(pool)
                labelled(FALLBACKS, step=str(step), reason=exc.code).inc()
                log.warning("strike_failed", query_id=query.query_id, strike_id=strike_id, pool=pool,
                            error=exc.message)
                continue
            broken = judge(cov, ok, elapsed)
            # Degraded = the bid took a degrade_to model; a provider's own id for the same model
            # (OpenRouter's "qwen/qwen-2.5-72b-instruct" for qwen-70b) is not a degradation.
            outcome = FragmentOutcome(
                fragment_id=frag.fragment_id, index=frag.index, pool=pool, strike_id=strike_id, model=ok.model,
                step=str(step), why=choice.why, cost_usd=ok.cost_usd, latency_ms=elapsed,
                prompt_tokens=ok.prompt_tokens, completion_tokens=ok.completion_tokens, kept=not broken,
                broken_terms=broken, tried=list(tried), degraded=choice.bid.model != cov.resources.model,
                role=frag.role, part=frag.part, confidence=from_logprob(ok.logprob_mean),
            )
            return Served(outcome=outcome, text=ok.text, others=[
                msgspec.structs.replace(o, step=str(step), tried=list(tried)) for o in losers])
        return None

    def _strike(self, query: Query, cov: Covenant, frag: Fragment, choice: Ranked, strike_id: str,
                lease_id: str | None, deadline: float) -> Strike:
        # The strike carries its hold (the worst it can cost), not the bid's prediction: the host
        # charges no more than that, and the budgets hold exactly that.
        left = deadline - time.monotonic()
        hold = max(choice.bid.price_usd, hold_usd(choice.bid.offer, frag.prompt_tokens, frag.max_tokens, left))
        return Strike(
            strike_id=strike_id, query_id=query.query_id, tenant=query.tenant, covenant_id=cov.covenant_id,
            pool=choice.bid.pool, fragment=frag, model=choice.bid.model, lease_id=lease_id,
            quote_seq=choice.bid.quote_seq, max_price_usd=hold,
            deadline_ms=int((time.time() + left) * 1000), trace_id=query.trace_id,
        )

    async def _hedged(self, query: Query, cov: Covenant, frag: Fragment, strike: Strike, choice: Ranked,
                      backup: Ranked, deadline: float,
                      ) -> tuple[StrikeOk, float, Ranked, Strike, list[FragmentOutcome]]:
        """The strike, with a duplicate to ``backup`` if it is late (strategies/hedge.py)."""
        second = self._strike(query, cov, frag, backup, new_id(), None, deadline)
        delay = hedge_delay_ms(choice.bid.offer, cov.strategy.hedge, cov)

        async def execute(s: Strike, price: float) -> tuple[StrikeOk, float]:
            return await self.execute(s, cov, price, deadline)

        async def cancel(s: Strike) -> None:
            await self.nc.publish(self.subjects.agent(s.pool),
                                  encode(CancelStrike(strike_id=s.strike_id, pool=s.pool, reason="hedge lost")))

        h = await hedged_execute(execute, cancel, (strike, strike.max_price_usd),
                                 (second, second.max_price_usd), delay)
        won, won_strike = (choice, strike) if h.winner == 0 else (backup, second)
        why = (f"; hedged after {h.fired_after_ms:.0f} ms (p{cov.strategy.hedge.percentile} of "
               f"{choice.bid.pool}), {'the first pool' if h.winner == 0 else 'the hedge'} won"
               if h.fired_after_ms is not None else "")
        won = Ranked(won.bid, won.score, won.why + why)
        losers = []
        if h.loser is not None:
            lo = h.loser
            losers.append(FragmentOutcome(
                fragment_id=frag.fragment_id, index=frag.index, pool=lo.pool, strike_id=lo.strike.strike_id,
                model=lo.strike.model, step="", why="hedged strike", cost_usd=lo.cost_usd,
                latency_ms=lo.latency_ms, role="hedge", contribution=lo.note, contributed=False, part=frag.part,
            ))
        return h.ok, h.elapsed_ms, won, won_strike, losers

    async def _queue(self, query: Query, cov: Covenant, frag: Fragment, earlier: list[Step], deadline: float,
                     tried: list[str], unmet: list[Unmet], stream: PartStream | None = None) -> Served | None:
        """Park the fragment until a new quote arrives, then retry the earlier steps."""
        until = min(deadline, time.monotonic() + cov.fallback.queue_max_wait_ms / 1000.0)
        log.info("fragment_parked", query_id=query.query_id, fragment=frag.fragment_id,
                 max_wait_ms=cov.fallback.queue_max_wait_ms)
        self.parked[frag.fragment_id] = frag
        if self.parking is not None:
            await self.parking.park(query, self._replies.get(query.query_id, ""))
        try:
            return await self._wait_parked(cov, frag, earlier, until, tried, query, stream)
        finally:
            del self.parked[frag.fragment_id]

    async def _wait_parked(self, cov: Covenant, frag: Fragment, earlier: list[Step], until: float,
                           tried: list[str], query: Query, stream: PartStream | None = None) -> Served | None:
        while (left := until - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.negotiator.book_changed.wait(), left)
            except TimeoutError:
                break
            for j, step in enumerate(earlier):
                if step.kind in ("queue", "fail"):
                    continue
                served = await self._try_step(query, cov, frag, step, j > 0, until, tried, [], stream)
                if served is not None:
                    o = served.outcome
                    return msgspec.structs.replace(served, outcome=msgspec.structs.replace(o, step=f"queue→{o.step}"))
        tried.append(f"queue: no capacity within {cov.fallback.queue_max_wait_ms} ms")
        return None

    async def _abandon(self, strike: Strike, why: str, *, sent: bool) -> None:
        """Tell the pool a strike will not be waited for: a run still going stops (it would bill a
        time-priced pool for nothing), and a Contract Net lease is freed now, not at its expiry."""
        if not sent and strike.lease_id is None:
            return  # nothing was sent and nothing is leased: the pool knows nothing of it
        try:
            await self.nc.publish(self.subjects.agent(strike.pool),
                                  encode(CancelStrike(strike_id=strike.strike_id, pool=strike.pool, reason=why)))
        except Exception as exc:  # best effort: the lease still expires, the run still ends at its deadline
            log.warning("cancel_publish_failed", strike_id=strike.strike_id, pool=strike.pool, error=repr(exc))

    async def execute(self, strike: Strike, cov: Covenant, price_usd: float,
                      deadline: float, on_chunk: OnChunk | None = None) -> tuple[StrikeOk, float]:
        """Hold budget → strike → settle → verdict. Settlement is idempotent per strike_id, so a
        strike executed (or delivered) twice is charged once. Two holds may apply: the covenant's
        ``tenant_budget_usd`` (ledger actor, this process) and the tenant's shared budget (KV).

        ``price_usd`` is the hold: the worst the strike can cost (``scoring.hold_usd``, carried as
        ``strike.max_price_usd``). The charge never exceeds it: a provider that bills more is
        charged at the hold, and the difference is logged and counted as the pool's loss."""
        budget = cov.cost.tenant_budget_usd
        shared = False
        try:
            if budget is not None:
                await self.ledger.call(Hold(strike.tenant, strike.strike_id, price_usd, budget))
            if self.budgets is not None:
                shared = await self.budgets.hold(strike.tenant, strike.strike_id, price_usd,
                                                 ttl_s=max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            # Released whatever the failure: a hold may have been taken after we stopped waiting
            # for it (cancelled, timed out). Both releases are idempotent per strike id.
            if budget is not None:
                self.ledger.tell(Release(strike.strike_id))
            if self.budgets is not None and not isinstance(exc, BudgetExceeded):
                with contextlib.suppress(HomeskilletError):
                    await self.budgets.release(strike.tenant, strike.strike_id)
            await self._abandon(strike, "its budget hold was refused or not confirmed", sent=False)
            raise
        t0 = time.monotonic()
        try:
            result = await self.dispatcher.strike(strike, max(0.001, deadline - time.monotonic()), on_chunk)
            if self.parking is not None and not await self.parking.still_ours(strike.query_id):
                # This process stalled and a peer took the query over: it strikes and charges, we don't.
                raise asyncio.CancelledError(f"query {strike.query_id} was taken over by a peer")
        except BaseException:
            if budget is not None:
                self.ledger.tell_soon(Release(strike.strike_id))
            if shared and self.budgets is not None:
                await self.budgets.release(strike.tenant, strike.strike_id)
            await self._abandon(strike, "lost, late or stopped before its result came", sent=True)
            raise
        elapsed = (time.monotonic() - t0) * 1000.0
        result = cap_charge(result, price_usd)
        if shared and self.budgets is not None:
            if isinstance(result, StrikeOk):
                await self.budgets.settle(strike.tenant, strike.strike_id, result.cost_usd)
            elif isinstance(result, StrikePreemption | StrikeCancelled):  # the part that ran is billed
                await self.budgets.settle(strike.tenant, strike.strike_id, result.billed_usd)
            else:
                await self.budgets.release(strike.tenant, strike.strike_id)
        verdict = Verdict(strike_id=strike.strike_id, query_id=strike.query_id, tenant=strike.tenant,
                          pool=strike.pool, covenant_id=cov.covenant_id, kept=False, latency_ms=elapsed)
        match result:
            case StrikeOk():
                self.ledger.tell_soon(Settle(strike.tenant, strike.strike_id, result.model, strike.pool,
                                             result.cost_usd))
                broken = judge(cov, result, elapsed)
                verdict.kept, verdict.broken_terms, verdict.cost_usd = not broken, broken, result.cost_usd
                self.dispatcher.verdict(verdict)
                return result, elapsed
            case StrikePreemption():
                # The provider bills the evicted part under its own rules; the re-strike is separate.
                self.ledger.tell_soon(Settle(strike.tenant, strike.strike_id, strike.model, strike.pool,
                                             result.billed_usd))
                verdict.preempted, verdict.cost_usd = True, result.billed_usd
                verdict.broken_terms = ["qos.preemptible"] if not cov.qos.preemptible else []
                self.dispatcher.verdict(verdict)
                raise Preempted(f"{strike.pool} preempted the strike: {result.message}")
            case StrikeCancelled():
                # We stopped it (a hedge lost): charge what the provider bills for the part that ran.
                self.ledger.tell_soon(Settle(strike.tenant, strike.strike_id, strike.model, strike.pool,
                                             result.billed_usd))
                verdict.cancelled, verdict.cost_usd, verdict.kept = True, result.billed_usd, True
                self.dispatcher.verdict(verdict)
                raise Cancelled(f"{strike.pool}: {result.message}", billed_usd=result.billed_usd)
            case StrikeFailure():
                self.ledger.tell_soon(Release(strike.strike_id))
                verdict.failed = True
                self.dispatcher.verdict(verdict)
                if result.code == "lease_rejected":
                    raise LeaseRejected(result.message)
                raise StrikeFailed(f"{strike.pool}: {result.code}: {result.message}")
        raise StrikeFailed(f"{strike.pool}: unexpected reply {type(result).__name__}")


class _Rates(msgspec.Struct, frozen=True):
    """A reservation's price when its pool no longer quotes (scoring.Prices)."""

    usd_per_hour: float
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0


def cap_charge(result: StrikeResult, hold_usd: float) -> StrikeResult:
    """``result`` charged at most ``hold_usd``; a provider's excess is the pool's loss (logged,
    counted in ``hs_pool_loss_usd_total``), never the tenant's. The host caps first (worker.py);
    this holds against a host that did not."""
    match result:
        case StrikeOk(cost_usd=charged) if charged > hold_usd:
            result = msgspec.structs.replace(result, cost_usd=hold_usd)
        case StrikePreemption(billed_usd=charged) | StrikeCancelled(billed_usd=charged) if charged > hold_usd:
            result = msgspec.structs.replace(result, billed_usd=hold_usd)
        case _:
            return result
    labelled(POOL_LOSS_USD, pool=result.pool).inc(charged - hold_usd)
    log.warning("charge_capped_at_hold", strike_id=result.strike_id, pool=result.pool, billed_usd=charged,
                hold_usd=hold_usd, pool_loss_usd=charged - hold_usd)
    return result


class _QueryRun:
    """One query's side of the strategies' seam (strategies/types.py ``Run``)."""

    def __init__(self, orch: Orchestrator, query: Query, cov: Covenant, deadline: float) -> None:
        self.orch, self.query, self.cov, self.deadline = orch, query, cov, deadline

    async def serve(self, frag: Fragment, stream: PartStream | None = None) -> Served:
        return await self.orch._serve_fragment(self.query, self.cov, frag, self.deadline, stream)

    async def serve_on(self, frag: Fragment, step: Step) -> Served | None:
        return await self.orch._try_step(self.query, self.cov, frag, step, True, self.deadline, [], [])

    async def serve_as(self, frag: Fragment, cov: Covenant, step: Step) -> Served | None:
        return await self.orch._try_step(self.query, cov, frag, step, False, self.deadline, [], [])

    def offers(self) -> list[Offer]:
        return self.orch.negotiator.pools()
