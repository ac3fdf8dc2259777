"""Variants compared: one scenario served several ways (``[[variants]]``) on the same seed and
arrivals, each run set against the reference run query by query.

Queries are matched by arrival order: the same seed gives every variant the same queries with the
same prompts. Two answers agree when their texts are equal (the replay engines say the same text
for the same model and prompt unless a fleet entry's answer model makes them wrong). A query a
cascade *kept cheap* is one whose every part was kept below the cascade's last tier, so
"agreement kept" measures the cascade's one risk: keeping a cheap answer that differs.
"""

from __future__ import annotations

import numpy as np

from .report import Check, Observations, Report, VariantStats, build_report, pool_table
from .scenario import Expect

__all__ = ["compare", "comparison_checks", "comparison_markdown", "variant_stats"]


def _ratio(x: float, ref: float) -> float:
    if ref > 0:
        return round(x / ref, 6)
    return 1.0 if x == 0 else float("inf")


def variant_stats(o: Observations, r: Report, ref_o: Observations, ref: Report) -> VariantStats:
    """``o`` (reported as ``r``) next to the reference run."""
    n = min(len(o.texts), len(ref_o.texts))
    both = [i for i in range(n) if o.error[i] == 0 and ref_o.error[i] == 0]
    same = [i for i in both if o.texts[i] == ref_o.texts[i]]
    kept_mask = o.kept_cheap if o.kept_cheap is not None else np.zeros(len(o.t), dtype=bool)
    kept = [i for i in both if kept_mask[i]]
    kept_same = [i for i in kept if o.texts[i] == ref_o.texts[i]]
    return VariantStats(
        variant=o.variant, answered=r.ledger.answered, errors=r.ledger.errors, cost_usd=r.cost.total_usd,
        cost_ratio=_ratio(r.cost.total_usd, ref.cost.total_usd), latency=r.latency,
        p99_ratio=_ratio(r.latency.p99_ms, ref.latency.p99_ms), compared=len(both),
        agreement=round(len(same) / max(1, len(both)), 6),
        kept_cheap=int(np.count_nonzero(kept_mask[:len(o.t)] & (o.error == 0))),
        agreement_kept=round(len(kept_same) / len(kept), 6) if kept else None)


def comparison_checks(e: Expect, rows: list[VariantStats]) -> list[Check]:
    """``[expect]``'s comparison terms for every variant but the reference (``rows[0]``)."""
    ref = rows[0].variant
    checks = []
    for v in rows[1:]:
        if e.max_cost_ratio is not None:
            checks.append(Check(name=f"cost {v.variant} / {ref}", ok=v.cost_ratio <= e.max_cost_ratio,
                                detail=f"{v.cost_ratio:.3f}× (${v.cost_usd:,.6f} vs ${rows[0].cost_usd:,.6f}); "
                                       f"limit {e.max_cost_ratio:g}×"))
        if e.max_p99_ratio is not None:
            checks.append(Check(name=f"p99 {v.variant} / {ref}", ok=v.p99_ratio <= e.max_p99_ratio,
                                detail=f"{v.p99_ratio:.3f}× ({v.latency.p99_ms:,.1f} ms vs "
                                       f"{rows[0].latency.p99_ms:,.1f} ms); limit {e.max_p99_ratio:g}×"))
        if e.min_agreement is not None:
            checks.append(Check(name=f"agreement {v.variant} with {ref}", ok=v.agreement >= e.min_agreement,
                                detail=f"{v.agreement:.3f} of {v.compared} queries answered in both gave the "
                                       f"reference's answer; required {e.min_agreement:g}"))
        if e.min_agreement_kept is not None:
            ok = v.agreement_kept is not None and v.agreement_kept >= e.min_agreement_kept
            detail = ("no query was kept below the cascade's last tier" if v.agreement_kept is None else
                      f"{v.agreement_kept:.3f} of the {v.kept_cheap} queries kept cheap gave the reference's "
                      f"answer; required {e.min_agreement_kept:g}")
            checks.append(Check(name=f"agreement kept {v.variant} with {ref}", ok=ok, detail=detail))
    return checks


def compare(runs: list[Observations]) -> Report:
    """One report of a scenario's variant runs (the reference's first): the reference's report,
    with every run's checks (named by variant), a comparison table and the comparison checks; the
    other runs' reports ride in ``variants``."""
    reports = [build_report(o) for o in runs]
    rows = [variant_stats(o, r, runs[0], reports[0]) for o, r in zip(runs, reports, strict=True)]
    main = reports[0]
    main.checks = [Check(name=f"{c.name} [{r.variant}]", ok=c.ok, detail=c.detail) for r in reports for c in r.checks]
    main.checks += comparison_checks(runs[0].scenario.expect, rows)
    main.comparison, main.variants = rows, reports[1:]
    return main


def comparison_markdown(r: Report) -> list[str]:
    lines = ["", f"## Variants (same seed and arrivals; reference: {r.variant})", "",
             "Agreement: share of the queries answered in both runs whose answer text is the reference's; "
             "kept cheap: answered queries a cascade kept below its last tier.", "",
             "| variant | answered | errors | cost $ | cost ratio | p50 ms | p95 ms | p99 ms | p99 ratio | agreement "
             "| kept cheap | agreement kept |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in r.comparison:
        kept = f"{v.agreement_kept:.3f}" if v.agreement_kept is not None else "–"
        lines.append(f"| {v.variant} | {v.answered} | {v.errors} | {v.cost_usd:,.6f} | {v.cost_ratio:.3f}× | "
                     f"{v.latency.p50_ms:,.1f} | {v.latency.p95_ms:,.1f} | {v.latency.p99_ms:,.1f} | "
                     f"{v.p99_ratio:.3f}× | {v.agreement:.3f} ({v.compared}) | "
                     f"{v.kept_cheap / max(1, v.answered):.1%} ({v.kept_cheap}) | {kept} |")
    for other in r.variants:
        lines += ["", f"### Pools, variant {other.variant}", "", *pool_table(other.pools)]
    return lines
