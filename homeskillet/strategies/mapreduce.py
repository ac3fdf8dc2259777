"""Long context, map → reduce: each chunk (cut by analysis to fit the pools' context window) is
served as its own fragment, in parallel; then a model combines the partial answers (a reduce
fragment). If the partial answers do not fit one reduce prompt, they are reduced in groups that
do, and those results again, until one answer is left (a tree reduce)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from ..analyze import Analysis, make_fragment
from ..broker import admits
from ..covenant import fallback_chain, parse_step
from ..errors import CovenantError
from ..fuse import Piece, reduce_groups, reduce_prompt
from ..offload import off_loop
from ..scoring import serves
from ..wire import Covenant, Fragment, FragmentOutcome, Offer
from .types import Served

__all__ = ["chunk_budget", "map_reduce"]

ServeOne = Callable[[Fragment], Awaitable[Served]]


def chunk_budget(cov: Covenant, offers: Sequence[Offer]) -> int:
    """Prompt tokens one fragment may carry: the covenant's ``chunk_tokens``, else the smallest
    context window among the quoting pools of the covenant's first step (so any of them can take
    any chunk, and chunks spread over them), else among the pools of any step it names; less the
    completion it reserves. 0: no window is known, so nothing is chunked."""
    mr = cov.strategy.map_reduce
    if mr.chunk_tokens:
        return mr.chunk_tokens
    st = cov.strategy
    chain = [s for s in fallback_chain(cov) if s.kind not in ("queue", "fail")]
    first = [parse_step(t) for t in st.cascade.tiers[:1]] if st.serve == "cascade" else chain[:1]
    every = chain + [parse_step(t) for t in (*st.cascade.tiers, *st.ensemble.members)]
    models = [cov.resources.model, *cov.fallback.degrade_to]
    for steps in (first, every):
        windows = [o.context_tokens for o in offers if o.context_tokens > 0
                   and any(admits(s, o) for s in steps) and any(serves(o, m) for m in models)]
        if windows:
            return max(32, min(windows) - cov.max_tokens)
    return 0


async def map_reduce(a: Analysis, part_index: int, instruction: str, chunks: Sequence[Fragment],
                     serve_map: ServeOne, serve_reduce: ServeOne, budget: int) -> Served:
    """Serve ``chunks`` (map), then reduce their answers until one is left."""
    mapped = await asyncio.gather(*(serve_map(f) for f in chunks))
    spent: list[FragmentOutcome] = []
    for k, s in enumerate(mapped):
        spent.extend(s.others)
        spent.append(msgspec.structs.replace(s.outcome, role="chunk",
                                             contribution=f"mapped: chunk {k + 1}/{len(chunks)}, fed to the reduce"))
    pieces = [Piece(fragment_id=s.outcome.fragment_id, prompt=f.prompt, text=s.text) for f, s in zip(chunks, mapped,
                                                                                                       strict=True)]
    level, index = 0, chunks[-1].index + 1
    while True:
        groups = reduce_groups(pieces, budget, instruction)
        if len(groups) == len(pieces) and len(pieces) > 1:
            raise CovenantError(
                f"map → reduce cannot combine the partial answers: two of them do not fit one {budget}-token "
                f"reduce prompt; lower max_tokens (now {a.max_tokens}) or raise strategy.map_reduce.chunk_tokens",
                term="max_tokens")
        # the reduce prompts' hashes and sketches: off the loop when the partial answers are long
        frags = await off_loop(sum(len(p.text) for p in pieces), _reducers, a, part_index, level, index, instruction,
                               pieces, groups)
        index += len(frags)
        reduced = await asyncio.gather(*(serve_reduce(f) for f in frags))
        final = len(frags) == 1
        for g, s in enumerate(reduced):
            spent.extend(s.others)
            note = (f"reduce of {len(groups[g])} partial answers" if final
                    else f"reduce level {level + 1}: group {g + 1}/{len(groups)} of {len(groups[g])}")
            outcome = msgspec.structs.replace(s.outcome, role="reduce", contribution=note)
            if final:
                return Served(outcome=outcome, text=s.text, others=spent)
            spent.append(outcome)
        pieces = [Piece(fragment_id=s.outcome.fragment_id, prompt=f.prompt, text=s.text)
                  for f, s in zip(frags, reduced, strict=True)]
        level += 1


def _reducers(a: Analysis, part_index: int, level: int, index: int, instruction: str, pieces: Sequence[Piece],
              groups: list[list[int]]) -> list[Fragment]:
    return [make_fragment(a, f"{a.query_id}.{part_index}.r{level}.{g}", index + g, part_index,
                          reduce_prompt(instruction, [pieces[i] for i in group]), "reduce")
            for g, group in enumerate(groups)]
