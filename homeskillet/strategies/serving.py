"""A query's plan, and serving it: analysis → (cache | single | ensemble | cascade) per fragment,
map → reduce for long parts, then the parts fused (ordered merge, or reduce by a model).

``plan`` is pure given the quote book; ``serve_plan`` does the striking through a ``Run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import msgspec

from ..analyze import Analysis, Assessment, Part, assess, choose_covenant, decompose, fragments_of, make_fragment
from ..cache import CacheHit, ResultCache
from ..covenant import CovenantBook
from ..errors import HomeskilletError
from ..fuse import Piece, ordered_merge, reduce_prompt
from ..offload import OFFLOAD_FROM_CHARS, off_loop
from ..wire import Covenant, Fragment, FragmentOutcome, Offer, Query
from .cascade import cascade
from .ensemble import ensemble
from .mapreduce import chunk_budget, map_reduce
from .types import Run, Served

__all__ = ["Plan", "Result", "plan", "serve_plan"]

T = TypeVar("T")


class Plan(msgspec.Struct, kw_only=True):
    cov: Covenant
    assessment: Assessment
    analysis: Analysis
    fragments: list[list[Fragment]]  # per part
    chunk_tokens: int
    routed_from: str = ""  # the covenant the query would have had without complexity routing

    @property
    def strategy(self) -> str:
        st = self.cov.strategy
        roles = {p.role for p in self.analysis.parts}
        shape = "+".join(r for r in ("question", "long") if r in roles) or "whole"
        words = [shape, st.serve] + (["hedge"] if st.hedge.enabled else []) + [f"fuse:{self.cov.fusion}"]
        if self.cov.cache.mode != "off":
            words.append(f"cache:{self.cov.cache.mode}")
        return "+".join(words)


class Result(msgspec.Struct, kw_only=True):
    text: str
    outcomes: list[FragmentOutcome]


def plan(query: Query, book: CovenantBook, offers: Sequence[Offer], *, max_fragments: int = 16) -> Plan:
    """Covenant (routed by complexity when its template has routes and the query named no model;
    one hop: the routed covenant's own routes are not followed), then the decomposition."""
    cov = book.resolve(query)
    assessment = assess(query)
    routed_from = ""
    if not query.model and cov.strategy.route:
        name = choose_covenant(cov.strategy.route, assessment.complexity)
        if name is not None and name != cov.name:
            routed_from = cov.name
            cov = book.resolve(msgspec.structs.replace(query, covenant=name))
    budget = chunk_budget(cov, offers) if "long_context" in cov.strategy.decompose else 0
    a = decompose(query, cov, max_fragments=max_fragments, chunk_tokens=budget)
    return Plan(cov=cov, assessment=assessment, analysis=a, fragments=fragments_of(a), chunk_tokens=budget,
                routed_from=routed_from)


def _from_cache(frag: Fragment, hit: CacheHit) -> FragmentOutcome:
    src = hit.source
    how = "exact" if hit.kind == "exact" else f"semantic, similarity {hit.similarity:.3f} to {hit.prompt!r}"
    return FragmentOutcome(
        fragment_id=frag.fragment_id, index=frag.index, pool=src.pool, strike_id="", model=src.model, step="cache",
        why=f"cached answer of {src.fragment_id} (strike {src.strike_id} on {src.pool})", cost_usd=0.0,
        latency_ms=0.0, role=frag.role, contribution=f"cache hit ({how})", part=frag.part, confidence=src.confidence,
        cached=hit.kind,
    )


async def serve_plan(run: Run, p: Plan, cache: ResultCache) -> Result:
    cov, tenant = p.cov, run.query.tenant

    async def serve_mode(frag: Fragment) -> Served:
        st = cov.strategy
        match st.serve:
            case "ensemble":
                return await ensemble(run, frag, st.ensemble)
            case "cascade":
                return await cascade(run, frag, st.cascade)
        return await run.serve(frag)

    async def serve_cached(frag: Fragment) -> Served:
        # A long prompt's embedding is made off the loop (offload.py); a short one's inline, when needed
        probe = (await off_loop(len(frag.prompt), cache.probe, frag, cov.cache)
                 if cov.cache.mode == "semantic" and len(frag.prompt) >= OFFLOAD_FROM_CHARS else None)
        hit = cache.get(tenant, cov.covenant_id, frag, cov.cache, probe)
        if hit is not None:
            return Served(outcome=_from_cache(frag, hit), text=hit.text)
        served = await serve_mode(frag)
        if not served.outcome.degraded and not served.outcome.cached:
            cache.put(tenant, cov.covenant_id, frag, served.text, served.outcome, cov.cache, probe)
        return served

    async def serve_part(i: int, part: Part, frags: list[Fragment]) -> Served:
        if part.role == "long":
            return await map_reduce(p.analysis, i, part.instruction, frags, serve_cached, serve_mode, p.chunk_tokens)
        return await serve_cached(frags[0])

    results = await _gather([serve_part(i, part, frags) for i, (part, frags)
                             in enumerate(zip(p.analysis.parts, p.fragments, strict=True))])
    for r in results:
        if isinstance(r, BaseException):
            if isinstance(r, HomeskilletError):
                raise r
            raise HomeskilletError(f"internal error serving query {run.query.query_id}: {r!r}") from r
    parts: list[Served] = [r for r in results if isinstance(r, Served)]
    prompts = [part.instruction or part.text if part.role == "long" else part.text for part in p.analysis.parts]
    pieces = [Piece(fragment_id=s.outcome.fragment_id, prompt=q, text=s.text) for q, s in zip(prompts, parts,
                                                                                                strict=True)]
    outcomes: list[FragmentOutcome] = []
    if cov.fusion == "reduce" and len(parts) > 1:
        a = p.analysis
        prompt = reduce_prompt(a.prompt if len(a.prompt) < 2000 else "", pieces)
        reducer = await off_loop(len(prompt), make_fragment, a, f"{a.query_id}.reduce",
                                 sum(len(f) for f in p.fragments), -1, prompt, "reduce")
        final = await serve_mode(reducer)
        for k, s in enumerate(parts):
            outcomes += [*s.others, _note(s.outcome, f"part {k + 1}/{len(parts)}, fed to the reduce")]
        last = msgspec.structs.replace(final.outcome, role="reduce", contribution=f"reduce of {len(parts)} parts")
        outcomes += [*final.others, last]
        return Result(text=final.text, outcomes=outcomes)
    fused = ordered_merge(pieces)
    for s, note in zip(parts, fused.notes, strict=True):
        outcomes += [*s.others, _note(s.outcome, note) if len(parts) > 1 else s.outcome]
    return Result(text=fused.text, outcomes=outcomes)


async def _gather(coros: list[Coroutine[Any, Any, T]]) -> list[T | BaseException]:
    """``gather(..., return_exceptions=True)``, without a task for a lone coroutine (most queries)."""
    if len(coros) == 1:
        try:
            return [await coros[0]]
        except Exception as exc:
            return [exc]
    return await asyncio.gather(*coros, return_exceptions=True)


def _note(o: FragmentOutcome, note: str) -> FragmentOutcome:
    return msgspec.structs.replace(o, contribution=f"{o.contribution}; {note}" if o.contribution != "answer" else note)
