"""Ensemble: the same fragment to every member step at once (pools of different price), fused
by majority vote, confidence-weighted best-of, or teacher override. Every member is charged;
each outcome says whether its answer made it into the answer and how it counted."""

from __future__ import annotations

import asyncio

import msgspec

from ..covenant import parse_step
from ..fuse import Piece, fuse_pieces
from ..wire import Ensemble, Fragment
from .types import Run, Served

__all__ = ["ensemble"]


async def ensemble(run: Run, frag: Fragment, policy: Ensemble) -> Served:
    results = await asyncio.gather(
        *(run.serve_on(msgspec.structs.replace(frag, fragment_id=f"{frag.fragment_id}.e{k}"), parse_step(m))
          for k, m in enumerate(policy.members)), return_exceptions=True)
    got = [(m, r) for m, r in zip(policy.members, results, strict=True) if isinstance(r, Served)]
    if not got:
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        served = await run.serve(frag)  # no member step could serve: the covenant's chain
        return Served(outcome=msgspec.structs.replace(
            served.outcome, role="ensemble", contribution="no ensemble member could serve; fallback chain"),
            text=served.text, others=served.others)
    pieces = [Piece(fragment_id=s.outcome.fragment_id, prompt=frag.prompt, text=s.text,
                    confidence=s.outcome.confidence, source=m, teacher=policy.fuse == "teacher" and m == policy.teacher)
              for m, s in got]
    fused = fuse_pieces(policy.fuse, pieces)
    outcomes = [msgspec.structs.replace(s.outcome, role="ensemble", contributed=used, contribution=f"{m}: {note}")
                for (m, s), used, note in zip(got, fused.used, fused.notes, strict=True)]
    chosen = next(i for i, p in enumerate(pieces) if p.text == fused.text)
    extra = [o for _, s in got for o in s.others]
    return Served(outcome=outcomes[chosen], text=fused.text,
                  others=[o for i, o in enumerate(outcomes) if i != chosen] + extra)
