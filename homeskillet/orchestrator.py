"""The query state machine: analyse → negotiate → strike → fuse. Lives on the I/O loop.

Each fragment walks its covenant's fallback chain. Within a step the best bid is struck; a strike
that fails (lost, silent, refused, preempted) excludes that pool and the next bid is tried; an
exhausted step moves the fragment to the next step; ``queue`` waits for new quotes up to the
covenant's max wait; at the end the query fails with an error naming every unmet term. Every
accepted query ends in an Answer or an explicit HomeskilletError; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client as NATS

from .analyze import analyze
from .broker import Negotiator
from .budgets import Budgets
from .cache import ResultCache
from .covenant import CovenantBook, Step, fallback_chain
from .errors import (
    Cancelled,
    DeadlineExceeded,
    HomeskilletError,
    LeaseRejected,
    NoPoolError,
    Preempted,
    StrikeFailed,
    Unmet,
)
from .fuse import fuse
from .ids import new_id
from .ledger import Hold, Release, Settle
from .parking import ParkingLot
from .scoring import Ranked
from .strategies import Served, backup_for, from_logprob, hedge_delay_ms, hedged_execute, plan, serve_plan
from .strike import Dispatcher
from .subjects import Subjects
from .supervisor import Supervised
from .telemetry import FALLBACKS, get_logger, labelled
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
    Verdict,
    encode,
)

__all__ = ["Orchestrator", "fallback_plan", "judge"]

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
                 cache: ResultCache | None = None) -> None:
        self.nc, self.subjects, self.covenants = nc, subjects, covenants
        self.negotiator, self.dispatcher, self.ledger = negotiator, dispatcher, ledger
        self.budgets = budgets  # the tenants' shared daily/monthly budgets (JetStream KV)
        self.max_fragments = max_fragments
        self.parking = parking  # durable queue step; None: parked fragments live in memory only
        self.cache = cache if cache is not None else ResultCache()
        self.parked: dict[str, Fragment] = {}  # fragments waiting in the queue step, by fragment_id
        self._replies: dict[str, str] = {}  # query_id -> the caller's NATS reply subject, while served

    async def serve(self, query: Query, reply: str = "") -> Answer:
        """Serve ``query``; ``reply`` (the caller's NATS inbox) lets a restarted orchestrator answer
        a query whose fragment was parked in the durable queue."""
        self._replies[query.query_id] = reply
        try:
            answer = await self._serve(query)
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

    async def _serve(self, query: Query) -> Answer:
        """Plan (covenant, complexity, decomposition; strategies/serving.py), serve the plan
        through a ``_QueryRun`` (cache, cascade, ensemble, map → reduce), fuse."""
        t0 = time.monotonic()
        p = plan(query, self.covenants, self.negotiator.pools(), max_fragments=self.max_fragments)
        cov = p.cov
        run = _QueryRun(self, query, cov, t0 + cov.qos.hard_deadline_ms / 1000.0)
        result = await serve_plan(run, p, self.cache)
        return Answer(
            query_id=query.query_id, tenant=query.tenant, text=result.text, covenant=cov.name,
            covenant_id=cov.covenant_id, fusion=cov.fusion, fragments=result.outcomes,
            cost_usd=sum(o.cost_usd for o in result.outcomes), latency_ms=(time.monotonic() - t0) * 1000.0,
            complexity=p.assessment.complexity, strategy=p.strategy,
        )

    async def serve_on(self, query: Query, res: Reservation) -> Answer:
        """Serve ``query`` on a reservation's pool and allocation: no negotiation, no fallback (the
        reservation is the contract); a failed strike is an explicit error naming the pool."""
        t0 = time.monotonic()
        if not query.model and not query.covenant and res.model:
            query = msgspec.structs.replace(query, model=res.model)
        cov = self.covenants.resolve(query)
        fragments = analyze(query, cov, max_fragments=self.max_fragments)
        deadline = t0 + cov.qos.hard_deadline_ms / 1000.0

        async def one(frag: Fragment) -> tuple[FragmentOutcome, str]:
            strike = Strike(strike_id=new_id(), query_id=query.query_id, tenant=query.tenant,
                            covenant_id=cov.covenant_id, pool=res.pool, fragment=frag,
                            model=res.model or cov.resources.model, allocation=res.allocation,
                            deadline_ms=int((time.time() + deadline - time.monotonic()) * 1000),
                            trace_id=query.trace_id)
            try:
                ok, elapsed = await self.execute(strike, cov, 0.0, deadline)
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

    async def _serve_fragment(self, query: Query, cov: Covenant, frag: Fragment, deadline: float) -> Served:
        chain = fallback_chain(cov)
        tried: list[str] = []
        unmet: list[Unmet] = []
        steps_tried: list[str] = []
        for i, (step, degrade) in enumerate(fallback_plan(chain)):
            if step.kind == "fail":
                break
            steps_tried.append(str(step))
            if step.kind == "queue":
                served = await self._queue(query, cov, frag, chain[:i], deadline, tried, unmet)
                if served is not None:
                    return served
                continue
            served = await self._try_step(query, cov, frag, step, degrade, deadline, tried, unmet)
            if served is not None:
                return served
            labelled(FALLBACKS, step=str(step), reason="exhausted").inc()
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"query {query.query_id}: covenant {cov.name!r} hard deadline "
                                   f"{cov.qos.hard_deadline_ms} ms passed", term="qos.hard_deadline_ms",
                                   tried=tuple(tried))
        raise NoPoolError(cov.name, unmet, tuple(tried or steps_tried))

    async def _try_step(self, query: Query, cov: Covenant, frag: Fragment, step: Step, degrade: bool,
                        deadline: float, tried: list[str], unmet: list[Unmet]) -> Served | None:
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
                    ok, elapsed = await self.execute(strike, cov, choice.bid.price_usd, deadline)
                else:
                    ok, elapsed, choice, strike, losers = await self._hedged(query, cov, frag, strike, choice,
                                                                             backup, deadline)
                    pool, strike_id = choice.bid.pool, strike.strike_id
            except (StrikeFailed, LeaseRejected) as exc:
                tried.append(f"{pool}: {exc.message}")
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
        return Strike(
            strike_id=strike_id, query_id=query.query_id, tenant=query.tenant, covenant_id=cov.covenant_id,
            pool=choice.bid.pool, fragment=frag, model=choice.bid.model, lease_id=lease_id,
            quote_seq=choice.bid.quote_seq, max_price_usd=choice.bid.price_usd,
            deadline_ms=int((time.time() + deadline - time.monotonic()) * 1000), trace_id=query.trace_id,
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

        h = await hedged_execute(execute, cancel, (strike, choice.bid.price_usd),
                                 (second, backup.bid.price_usd), delay)
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
                     tried: list[str], unmet: list[Unmet]) -> Served | None:
        """Park the fragment until a new quote arrives, then retry the earlier steps."""
        until = min(deadline, time.monotonic() + cov.fallback.queue_max_wait_ms / 1000.0)
        log.info("fragment_parked", query_id=query.query_id, fragment=frag.fragment_id,
                 max_wait_ms=cov.fallback.queue_max_wait_ms)
        self.parked[frag.fragment_id] = frag
        if self.parking is not None:
            await self.parking.park(query, self._replies.get(query.query_id, ""))
        try:
            return await self._wait_parked(cov, frag, earlier, until, tried, query)
        finally:
            del self.parked[frag.fragment_id]

    async def _wait_parked(self, cov: Covenant, frag: Fragment, earlier: list[Step], until: float,
                           tried: list[str], query: Query) -> Served | None:
        while (left := until - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.negotiator.book_changed.wait(), left)
            except TimeoutError:
                break
            for j, step in enumerate(earlier):
                if step.kind in ("queue", "fail"):
                    continue
                served = await self._try_step(query, cov, frag, step, j > 0, until, tried, [])
                if served is not None:
                    o = served.outcome
                    return msgspec.structs.replace(served, outcome=msgspec.structs.replace(o, step=f"queue→{o.step}"))
        tried.append(f"queue: no capacity within {cov.fallback.queue_max_wait_ms} ms")
        return None

    async def execute(self, strike: Strike, cov: Covenant, price_usd: float,
                      deadline: float) -> tuple[StrikeOk, float]:
        """Hold budget → strike → settle → verdict. Settlement is idempotent per strike_id, so a
        strike executed (or delivered) twice is charged once. Two holds may apply: the covenant's
        ``tenant_budget_usd`` (ledger actor, this process) and the tenant's shared budget (KV)."""
        budget = cov.cost.tenant_budget_usd
        if budget is not None:
            await self.ledger.call(Hold(strike.tenant, strike.strike_id, price_usd, budget))
        shared = False
        try:
            if self.budgets is not None:
                shared = await self.budgets.hold(strike.tenant, strike.strike_id, price_usd,
                                                 ttl_s=max(0.0, deadline - time.monotonic()))
        except BaseException:
            if budget is not None:
                self.ledger.tell(Release(strike.strike_id))
            raise
        t0 = time.monotonic()
        try:
            result = await self.dispatcher.strike(strike, max(0.001, deadline - time.monotonic()))
        except BaseException:
            if budget is not None:
                self.ledger.tell_soon(Release(strike.strike_id))
            if shared and self.budgets is not None:
                await self.budgets.release(strike.tenant, strike.strike_id)
            raise
        elapsed = (time.monotonic() - t0) * 1000.0
        if shared and self.budgets is not None:
            if isinstance(result, StrikeOk | StrikePreemption):
                await self.budgets.settle(strike.tenant, strike.strike_id,
                                          result.cost_usd if isinstance(result, StrikeOk) else result.billed_usd)
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


class _QueryRun:
    """One query's side of the strategies' seam (strategies/types.py ``Run``)."""

    def __init__(self, orch: Orchestrator, query: Query, cov: Covenant, deadline: float) -> None:
        self.orch, self.query, self.cov, self.deadline = orch, query, cov, deadline

    async def serve(self, frag: Fragment) -> Served:
        return await self.orch._serve_fragment(self.query, self.cov, frag, self.deadline)

    async def serve_on(self, frag: Fragment, step: Step) -> Served | None:
        return await self.orch._try_step(self.query, self.cov, frag, step, True, self.deadline, [], [])

    def offers(self) -> list[Offer]:
        return self.orch.negotiator.pools()
