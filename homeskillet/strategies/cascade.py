"""Cascade: the cheapest tier first; the answer is kept when its confidence reaches the
covenant's threshold, otherwise the fragment escalates to the next tier. The last tier's answer
is always kept. Escalated answers are charged and listed, not used.

Confidence is defined in ``confidence.py``: token logprobs when the pool returns them, else
self-consistency over ``samples`` strikes; with neither, the tier's answer is not kept.
"""

from __future__ import annotations

import asyncio

import msgspec

from ..covenant import parse_step
from ..telemetry import CASCADE_STEPS, labelled
from ..wire import Cascade, Fragment, FragmentOutcome
from .confidence import SAMPLE_TEMPERATURE, agreement
from .types import Run, Served

__all__ = ["cascade", "keep"]


def keep(confidence: float | None, threshold: float, last: bool) -> bool:
    """Whether a tier's answer stands: the last tier always; others with evidence ≥ threshold."""
    return last or (confidence is not None and confidence >= threshold)


async def _tier(run: Run, frag: Fragment, tier: str, samples: int) -> tuple[Served, float | None] | None:
    """Strike one tier; its answer and confidence (None: the tier has no pool that can serve)."""
    step = parse_step(tier)
    if samples <= 1:
        served = await run.serve_on(frag, step)
        if served is None:
            return None
        return served, served.outcome.confidence
    hot = msgspec.structs.replace(frag, temperature=max(frag.temperature, SAMPLE_TEMPERATURE))
    results = await asyncio.gather(*(run.serve_on(msgspec.structs.replace(hot, fragment_id=f"{frag.fragment_id}.s{i}"),
                                                  step) for i in range(samples)), return_exceptions=True)
    got = [r for r in results if isinstance(r, Served)]
    if not got:
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return None
    modal, share = agreement([s.text for s in got])
    # With logprobs too, the samples' own confidence can only lower the agreement's.
    logps = [s.outcome.confidence for s in got if s.outcome.confidence is not None]
    conf = min(share, *logps) if logps else share
    chosen = got[modal]
    others = [o for i, s in enumerate(got) if i != modal for o in s.all()] + chosen.others
    note = f"sample {modal + 1}/{len(got)} (self-consistency {share:.2f})"
    out = msgspec.structs.replace(chosen.outcome, confidence=conf, contribution=note)
    rest = [msgspec.structs.replace(o, contributed=False, contribution="another self-consistency sample")
            for o in others]
    return Served(outcome=out, text=chosen.text, others=rest), conf


async def cascade(run: Run, frag: Fragment, policy: Cascade) -> Served:
    """Serve ``frag`` through the tiers; fall back to the covenant's chain if no tier could."""
    spent: list[FragmentOutcome] = []
    skipped: list[str] = []
    for k, tier in enumerate(policy.tiers):
        last = k == len(policy.tiers) - 1
        # The last tier's answer is kept whatever its confidence: one strike there, not samples.
        got = await _tier(run, msgspec.structs.replace(frag, fragment_id=f"{frag.fragment_id}.c{k}"), tier,
                          1 if last else policy.samples)
        if got is None:
            skipped.append(tier)
            continue
        served, conf = got
        shown = "none" if conf is None else f"{conf:.2f}"
        if keep(conf, policy.threshold, last):
            labelled(CASCADE_STEPS, tier=tier, outcome="kept").inc()
            why = (f"kept at tier {k + 1}/{len(policy.tiers)} ({tier}): " +
                   ("last tier" if conf is None or conf < policy.threshold else
                    f"confidence {shown} ≥ {policy.threshold:g}"))
            out = msgspec.structs.replace(served.outcome, role="cascade", contribution=why, confidence=conf)
            return Served(outcome=out, text=served.text, others=[*spent, *served.others])
        labelled(CASCADE_STEPS, tier=tier, outcome="escalated").inc()
        spent.extend(served.others)
        spent.append(msgspec.structs.replace(
            served.outcome, role="cascade", contributed=False, confidence=conf,
            contribution=f"escalated from tier {k + 1} ({tier}): confidence {shown} < {policy.threshold:g}"))
    served = await run.serve(frag)
    why = f"no cascade tier could serve ({', '.join(skipped)}); served by the fallback chain"
    return Served(outcome=msgspec.structs.replace(served.outcome, role="cascade", contribution=why),
                  text=served.text, others=[*spent, *served.others])
