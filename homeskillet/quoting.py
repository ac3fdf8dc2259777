"""Quotes without execution: what ``Orchestrator.serve`` would negotiate, stopped before the strike.

Each fragment walks its covenant's fallback chain the way a query would: the first step with an
admissible bid wins; its other bids are the alternatives; pools that refused are listed with the
covenant term they cannot meet. Standing quotes are read from the book; a covenant that asks for
Contract Net (or a step no pool has quoted for) gets a real call for proposals, and every bidder
is then told it was not awarded. No lease, hold or charge is made.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from .analyze import analyze
from .covenant import Step, fallback_chain
from .errors import Unmet
from .offload import off_loop, query_chars
from .orchestrator import Orchestrator
from .scoring import Ranked
from .wire import Covenant, Fragment, FragmentQuote, Query, QuoteReply, RankedBid, RefusedBy, Rejection, encode

__all__ = ["quote_query"]


def _ranked(r: Ranked) -> RankedBid:
    b = r.bid
    return RankedBid(pool=b.pool, provider=b.offer.provider, pool_class=b.offer.pool_class, model=b.model,
                     price_usd=b.price_usd, predicted_start_ms=b.predicted_start_ms,
                     predicted_total_ms=b.predicted_total_ms, tokens_per_s=b.tokens_per_s,
                     preemptible=b.offer.preemptible, score=round(r.score, 6), why=r.why)


def _refused(unmet: list[Unmet]) -> list[RefusedBy]:
    seen: dict[tuple[str, str], RefusedBy] = {}
    for u in unmet:
        seen.setdefault((u.pool, u.term), RefusedBy(pool=u.pool, term=u.term, detail=u.detail))
    return list(seen.values())


async def _candidates(orch: Orchestrator, step: Step, cov: Covenant, frag: Fragment,
                      degrade: bool) -> tuple[list[Ranked], list[Unmet], Literal["quotes", "cfp"]]:
    neg = orch.negotiator
    if cov.negotiation == "quotes":
        ranked, unmet = neg.from_quotes(step, cov, frag, (), degrade)
        if ranked or neg.covers(step):
            return ranked, unmet, "quotes"
    ranked, unmet, cfp_id = await neg.contract_net(step, cov, frag, (), degrade)
    for r in ranked:  # Contract Net: every bidder hears that this call ends without an award
        await orch.nc.publish(orch.subjects.agent(r.bid.pool),
                              encode(Rejection(cfp_id=cfp_id, pool=r.bid.pool, reason="quote only: not awarded")))
    return ranked, unmet, "cfp"


async def _quote_fragment(orch: Orchestrator, cov: Covenant, frag: Fragment) -> FragmentQuote:
    tried: list[str] = []
    unmet: list[Unmet] = []
    negotiation: Literal["quotes", "cfp"] = cov.negotiation
    for i, step in enumerate(fallback_chain(cov)):
        if step.kind in ("queue", "fail"):
            continue
        ranked, refusals, negotiation = await _candidates(orch, step, cov, frag, i > 0)
        unmet.extend(refusals)
        if ranked:
            return FragmentQuote(fragment_id=frag.fragment_id, index=frag.index, step=str(step),
                                 negotiation=negotiation, winner=_ranked(ranked[0]),
                                 alternatives=[_ranked(r) for r in ranked[1:]], refused=_refused(unmet),
                                 steps_tried=tried)
        tried.append(str(step))
    return FragmentQuote(fragment_id=frag.fragment_id, index=frag.index, step="",
                         negotiation=negotiation, refused=_refused(unmet), steps_tried=tried)


async def quote_query(orch: Orchestrator, query: Query) -> QuoteReply:
    """The query must be validated (the gateway does it)."""
    cov = orch.covenants.resolve(query)
    fragments = await off_loop(query_chars(query), analyze, query, cov, max_fragments=orch.max_fragments)
    quotes = list(await asyncio.gather(*(_quote_fragment(orch, cov, f) for f in fragments)))
    return QuoteReply(query_id=query.query_id, tenant=query.tenant, covenant=cov.name, covenant_id=cov.covenant_id,
                      fragments=quotes, total_usd=sum(q.winner.price_usd for q in quotes if q.winner),
                      servable=all(q.winner for q in quotes))
