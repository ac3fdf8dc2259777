"""A query's plan, and serving it: analysis → (cache | single | ensemble | cascade) per fragment,
map → reduce for long parts, then the parts fused (ordered merge, or reduce by a model).

``plan`` is pure given the quote book; ``serve_plan`` does the striking through a ``Run``.

Streamed (a ``TextSink`` given): a part served by a single strike streams live, in answer order
(``streaming.AnswerStream``). What must wait for whole answers streams its text when it is known,
and the answer's strategy says so with "(buffered)": cascade and ensemble (they judge or vote on
whole answers), a hedged fragment (two strikes race), a long part (map → reduce), and the parts
of a reduce fusion (the reduce strike itself streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import msgspec

from ..analyze import Analysis, Assessment, Part, assess, choose_covenant, decompose, fragments_of, make_fragment
from ..cache import CacheHit, ResultCache
from ..covenant import CovenantBook
from ..distill.distiller import Distiller
from ..errors import HomeskilletError
from ..fuse import Piece, ordered_merge, reduce_prompt
from ..offload import OFFLOAD_FROM_CHARS, off_loop
from ..streaming import AnswerStream, PartStream, TextSink
from ..wire import Covenant, Fragment, FragmentOutcome, Offer, Query
from .cascade import cascade
from .distill import distilled
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
        return self.describe()

    def describe(self, *, streamed: bool = False) -> str:
        """How the plan serves, e.g. "question+single+fuse:ordered"; streamed, each word that must
        wait for whole answers says "(buffered)"."""
        st = self.cov.strategy
        b = " (buffered)" if streamed else ""
        roles = {p.role for p in self.analysis.parts}
        shape = "+".join(r + (b if r == "long" else "") for r in ("question", "long") if r in roles) or "whole"
        serve = st.serve + (b if st.serve != "single" else "")
        fusion = f"fuse:{self.cov.fusion}" + (b if self.cov.fusion == "reduce" and len(self.analysis.parts) > 1 else "")
        words = [shape, serve] + ([f"hedge{b}"] if st.hedge.enabled else []) + [fusion]
        if self.cov.cache.mode != "off":
            words.append(f"cache:{self.cov.cache.mode}")
        return "+".join(words)


class Result(msgspec.Struct, kw_only=True):
    text: str
    outcomes: list[FragmentOutcome]
    ttft_ms: float | None = None  # streamed: from the start of the query to its first text sent


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


def _prefixes(prompts: list[str]) -> list[str]:
    """What ``ordered_merge`` puts before each part's text (nothing for a lone part)."""
    if len(prompts) == 1:
        return [""]
    return [f"{'' if i == 0 else chr(10) * 2}{i + 1}. {q}\n" for i, q in enumerate(prompts)]


async def serve_plan(run: Run, p: Plan, cache: ResultCache, sink: TextSink | None = None,
                     t0: float | None = None, distiller: Distiller | None = None) -> Result:
    """Serve the plan; with ``sink``, stream the answer's text to it as it comes (``t0``: when the
    query was accepted, for the time to first token). A ``[distill]`` covenant's fragments go
    through ``distilled`` (a student's answer comes whole; the teacher's streams)."""
    cov, tenant = p.cov, run.query.tenant
    prompts = [part.instruction or part.text if part.role == "long" else part.text for part in p.analysis.parts]
    reduced = cov.fusion == "reduce" and len(prompts) > 1
    out = None if sink is None else AnswerStream(sink, [""] if reduced else _prefixes(prompts), t0)
    terms = distiller.terms(cov.distill) if distiller is not None else None

    async def serve_mode(frag: Fragment, stream: PartStream | None = None) -> Served:
        if terms is not None and distiller is not None and frag.role != "reduce":
            return await distilled(run, frag, terms, distiller, lambda f: serve_chosen(f, stream))
        return await serve_chosen(frag, stream)

    async def serve_chosen(frag: Fragment, stream: PartStream | None = None) -> Served:
        st = cov.strategy
        match st.serve:
            case "ensemble":
                return await ensemble(run, frag, st.ensemble)
            case "cascade":
                return await cascade(run, frag, st.cascade)
        return await run.serve(frag, stream)

    async def serve_cached(frag: Fragment, stream: PartStream | None = None) -> Served:
        # A long prompt's embedding is made off the loop (offload.py); a short one's inline, when needed
        probe = (await off_loop(len(frag.prompt), cache.probe, frag, cov.cache)
                 if cov.cache.mode == "semantic" and len(frag.prompt) >= OFFLOAD_FROM_CHARS else None)
        hit = cache.get(tenant, cov.covenant_id, frag, cov.cache, probe)
        if hit is not None:
            return Served(outcome=_from_cache(frag, hit), text=hit.text)
        served = await serve_mode(frag, stream)
        if not served.outcome.degraded and not served.outcome.cached:
            cache.put(tenant, cov.covenant_id, frag, served.text, served.outcome, cov.cache, probe)
        return served

    async def serve_part(i: int, part: Part, frags: list[Fragment]) -> Served:
        stream = None if out is None or reduced else out.part(i)
        if part.role == "long":
            served = await map_reduce(p.analysis, i, part.instruction, frags, serve_cached, serve_mode,
                                      p.chunk_tokens)
        else:
            served = await serve_cached(frags[0], stream)
        if stream is not None:
            stream.finish(served.text)
        return served

    results = await _gather([serve_part(i, part, frags) for i, (part, frags)
                             in enumerate(zip(p.analysis.parts, p.fragments, strict=True))])
    for r in results:
        if isinstance(r, BaseException):
            if isinstance(r, HomeskilletError):
                raise r
            raise HomeskilletError(f"internal error serving query {run.query.query_id}: {r!r}") from r
    parts: list[Served] = [r for r in results if isinstance(r, Served)]
    pieces = [Piece(fragment_id=s.outcome.fragment_id, prompt=q, text=s.text) for q, s in zip(prompts, parts,
                                                                                                strict=True)]
    outcomes: list[FragmentOutcome] = []
    if cov.fusion == "reduce" and len(parts) > 1:
        a = p.analysis
        prompt = reduce_prompt(a.prompt if len(a.prompt) < 2000 else "", pieces)
        reducer = await off_loop(len(prompt), make_fragment, a, f"{a.query_id}.reduce",
                                 sum(len(f) for f in p.fragments), -1, prompt, "reduce")
        final = await serve_mode(reducer, out.part(0) if out is not None else None)
        for k, s in enumerate(parts):
            outcomes += [*s.others, _note(s.outcome, f"part {k + 1}/{len(parts)}, fed to the reduce")]
        last = msgspec.structs.replace(final.outcome, role="reduce", contribution=f"reduce of {len(parts)} parts")
        outcomes += [*final.others, last]
        return _result(final.text, outcomes, out)
    fused = ordered_merge(pieces)
    for s, note in zip(parts, fused.notes, strict=True):
        outcomes += [*s.others, _note(s.outcome, note) if len(parts) > 1 else s.outcome]
    return _result(fused.text, outcomes, out)


def _result(text: str, outcomes: list[FragmentOutcome], out: AnswerStream | None) -> Result:
    if out is None:
        return Result(text=text, outcomes=outcomes)
    if out.parts and not out.parts[-1].done:
        out.parts[-1].finish(text)  # the reduce part
    out.close(text)
    return Result(text=text, outcomes=outcomes, ttft_ms=out.ttft_ms)


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
