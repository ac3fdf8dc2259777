"""Replay reports: what a run cost, how fast it was, whether every covenant held, and whether any
query was lost. Live runs and virtual-time runs fill the same ``Observations`` (numpy columns, one
row per query) and get the same ``Report`` (a msgspec Struct), written as JSON and Markdown, with
PNG plots (latency, cost and utilisation over time) when the ``replay`` extra is installed.

A scenario with ``[[variants]]`` is replayed once per variant; ``compare.py`` makes one report of
the runs (the reference's, with a comparison section and every variant's checks).

The report holds no wall-clock figure, so the same scenario and seed in virtual time give the same
report byte for byte; the CLI prints the wall time beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from .scenario import Scenario

__all__ = ["ERROR_KINDS", "Check", "Cost", "CovenantStats", "Latency", "Ledger", "Observations", "Plots", "PoolStats",
           "PoolUsage", "Report", "Series", "VariantStats", "build_report", "markdown", "pool_table", "write_report"]

# Index 0 is "answered"; "lost" is a query that got neither an answer nor an explicit error.
ERROR_KINDS = ["", "no_pool", "deadline_exceeded", "budget_exceeded", "lost"]
_DAY_S = 86_400.0


class Series:
    """Per-bucket sums over the run: cost settled, and busy server-seconds per pool."""

    def __init__(self, edges: np.ndarray, pools: int) -> None:
        self.edges = edges
        nb = len(edges) - 1
        self.cost = np.zeros(nb)
        self.busy = np.zeros((pools, nb))

    def bucket(self, t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.edges, t, side="right") - 1
        return np.minimum(np.maximum(i, 0), len(self.cost) - 1)  # np.clip, without its Python overhead

    def add_cost(self, t: np.ndarray, usd: np.ndarray) -> None:
        _add_sums(self.cost, self.bucket(t), usd)

    def add_busy_many(self, pool: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Busy server-seconds of strikes of several pools (``pool``: each strike's pool index),
        each spread over the buckets it overlaps, so no bucket holds more than its length."""
        nb = len(self.cost)
        first, last = self.bucket(start), self.bucket(end)
        # Most strikes lie within one bucket and are summed in one pass. Time outside the edges is not plotted.
        inside = (first == last) & (start >= self.edges[0]) & (end <= self.edges[-1])
        if not inside.all():
            edges = self.edges
            for p, s, e, b0, b1 in zip(pool[~inside], start[~inside], end[~inside], first[~inside], last[~inside],
                                       strict=True):
                for b in range(int(b0), int(b1) + 1):
                    self.busy[p, b] += max(0.0, min(float(e), edges[b + 1]) - max(float(s), edges[b]))
            pool, start, end, first = pool[inside], start[inside], end[inside], first[inside]
        _add_sums(self.busy.reshape(-1), pool * nb + first, end - start)

    def add_busy(self, pool: int, start: np.ndarray, end: np.ndarray) -> None:
        self.add_busy_many(np.full(len(start), pool), start, end)


def _add_sums(into: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """``into += np.bincount(idx, values, minlength=len(into))``, touching only the span of ``idx``:
    a batch of strikes ends within a second, so it falls in one or two of the buckets."""
    if not len(idx):
        return
    lo = int(idx.min())
    sums = np.bincount(idx - lo, weights=values)
    into[lo:lo + len(sums)] += sums


@dataclass
class PoolUsage:
    name: str
    simulates: str
    pool_class: str
    accelerators: int
    capacity: int
    strikes: int
    failures: int
    preemptions: int
    lost: int
    busy_s: float
    cost_usd: float
    fleet_usd: float  # renting every accelerator for the whole run


@dataclass
class Observations:
    scenario: Scenario
    mode: str  # "virtual" | "live"
    policy: str
    duration_s: float
    wall_s: float
    covenants: list[str]  # per class
    targets_ms: list[float]  # per class: the covenant's latency target
    t: np.ndarray  # per query: arrival, seconds
    cls: np.ndarray
    latency_ms: np.ndarray  # nan unless answered
    cost_usd: np.ndarray
    error: np.ndarray  # index into error_kinds; 0 = answered
    fallback: np.ndarray  # a fragment was served by a later step or after a failed strike
    ledger_usd: float  # everything charged, evicted parts included
    tokens_in: int
    tokens_out: int
    broken: dict[tuple[int, str], int]  # (class, term) -> answered fragments that broke it
    fragments_ok: list[int]  # per class
    pools: list[PoolUsage]
    series: Series
    alloc_ms: np.ndarray  # allocation latency samples (live: answer minus strike time)
    error_kinds: list[str] = field(default_factory=lambda: list(ERROR_KINDS))
    faults: list[str] = field(default_factory=list)  # what was enacted, when
    variant: str = ""  # the scenario's variant this run served ("" without variants)
    texts: list[str] = field(default_factory=list)  # live: per query, the answer's text ("" unless answered)
    kept_cheap: np.ndarray | None = None  # live: per query, a cascade kept every part below its last tier


class Latency(msgspec.Struct, kw_only=True):
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float


class CovenantStats(msgspec.Struct, kw_only=True):
    covenant: str
    sent: int
    answered: int
    errors: int
    latency: Latency
    latency_target_ms: float
    slo_attainment: float  # answered within the latency target / sent
    cost_usd: float
    fragments: int
    broken_terms: dict[str, int]


class PoolStats(msgspec.Struct, kw_only=True):
    name: str
    simulates: str
    pool_class: str
    accelerators: int
    capacity: int
    strikes: int
    failures: int
    preemptions: int
    lost: int
    utilisation: float  # busy slot-seconds / (capacity × run length)
    cost_usd: float
    fleet_usd: float


class Ledger(msgspec.Struct, kw_only=True):
    sent: int
    answered: int
    errors: int
    lost: int
    balanced: bool  # sent = answered + explicit errors


class Cost(msgspec.Struct, kw_only=True):
    total_usd: float  # charged (the ledger), evicted parts of preempted strikes included
    per_1k_queries_usd: float
    per_mtok_usd: float
    per_day_usd: float
    budget_usd_per_day: float | None
    within_budget: bool | None
    fleet_usd: float  # renting every time-priced accelerator for the run
    fleet_per_day_usd: float


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str


class Plots(msgspec.Struct, kw_only=True):
    t_s: list[float]
    p50_ms: list[float]
    p95_ms: list[float]
    p99_ms: list[float]
    cost_usd: list[float]
    utilisation: dict[str, list[float]]


class VariantStats(msgspec.Struct, kw_only=True):
    """One variant's run next to the reference's, query by query (same seed, arrivals and prompts)."""

    variant: str
    answered: int
    errors: int
    cost_usd: float  # charged (the ledger)
    cost_ratio: float  # / the reference's
    latency: Latency
    p99_ratio: float  # / the reference's
    compared: int  # queries answered in both runs
    agreement: float  # share of those whose answer text is the reference's
    kept_cheap: int  # answered queries a cascade kept below its last tier (on a cheaper pool)
    agreement_kept: float | None  # agreement over those (None: none kept)


class Report(msgspec.Struct, kw_only=True):
    scenario: str
    mode: str
    policy: str
    seed: int
    duration_s: float
    ledger: Ledger
    throughput_qps: float
    peak_concurrency: int  # queries in flight at once, at the busiest moment
    latency: Latency
    allocation: Latency
    errors: dict[str, int]
    error_rate: float
    fallbacks: int
    cost: Cost
    covenants: list[CovenantStats]
    pools: list[PoolStats]
    checks: list[Check]
    plots: Plots
    faults: list[str] = []
    baselines: list[Report] = []
    variant: str = ""  # the variant this run served ("" without variants)
    notes: list[str] = []
    comparison: list[VariantStats] = []  # every variant, the reference (this report) first
    variants: list[Report] = []  # the other variants' own reports

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _latency(ms: np.ndarray) -> Latency:
    ms = ms[~np.isnan(ms)]
    if not len(ms):
        return Latency(n=0, p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, mean_ms=0.0)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return Latency(n=len(ms), p50_ms=round(float(p50), 3), p95_ms=round(float(p95), 3), p99_ms=round(float(p99), 3),
                   mean_ms=round(float(ms.mean()), 3))


def _bucket_percentiles(o: Observations) -> tuple[list[float], list[float], list[float]]:
    nb = len(o.series.cost)
    ok = ~np.isnan(o.latency_ms)
    b = o.series.bucket(o.t[ok])
    lat = o.latency_ms[ok]
    order = np.lexsort((lat, b))
    b, lat = b[order], lat[order]
    starts = np.searchsorted(b, np.arange(nb), side="left")
    ends = np.searchsorted(b, np.arange(nb), side="right")
    out: list[list[float]] = [[], [], []]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        for k, p in enumerate((0.50, 0.95, 0.99)):
            out[k].append(round(float(lat[lo + min(hi - lo - 1, int(p * (hi - lo)))]), 3) if hi > lo else 0.0)
    return out[0], out[1], out[2]


def _peak_concurrency(o: Observations) -> int:
    ok = ~np.isnan(o.latency_ms)
    if not ok.any():
        return 0
    start, end = o.t[ok], o.t[ok] + o.latency_ms[ok] / 1000.0
    times = np.concatenate([start, end])
    steps = np.concatenate([np.ones(len(start), dtype=np.int64), -np.ones(len(end), dtype=np.int64)])
    order = np.lexsort((steps, times))  # at equal times, ends (-1) before starts
    return int(np.max(np.cumsum(steps[order])))


def _checks(o: Observations, r: Report) -> list[Check]:
    e = o.scenario.expect
    checks = [Check(name="nothing lost", ok=r.ledger.balanced,
                    detail=f"sent {r.ledger.sent} = answered {r.ledger.answered} + errors {r.ledger.errors}"
                           f" (lost {r.ledger.lost})")]
    explicit = r.ledger.errors / max(1, r.ledger.sent)
    checks.append(Check(name="error rate", ok=explicit <= e.max_error_rate,
                        detail=f"{explicit:.4%} of queries ended in an explicit error; allowed {e.max_error_rate:.4%}"))
    for term in e.keep_terms:
        n = sum(c.broken_terms.get(term, 0) for c in r.covenants)
        checks.append(Check(name=f"term {term} kept", ok=n == 0, detail=f"{n} answered fragment(s) broke it"))
    for cov, least in e.min_slo.items():
        for stats in (c for c in r.covenants if c.covenant == cov or c.covenant.startswith(cov + "/")):
            got = stats.slo_attainment
            checks.append(Check(name=f"SLO {stats.covenant}", ok=got >= least,
                                detail=f"{got:.2%} answered within the latency target; required {least:.2%}"))
    if e.max_cost_per_day_usd is not None:
        checks.append(Check(name="cost per day", ok=r.cost.per_day_usd <= e.max_cost_per_day_usd,
                            detail=f"${r.cost.per_day_usd:,.2f}/day charged; limit ${e.max_cost_per_day_usd:,.2f}"))
    return checks


def build_report(o: Observations) -> Report:
    s = o.scenario
    n = len(o.t)
    kinds = o.error_kinds
    counts = np.bincount(o.error.astype(np.int64), minlength=len(kinds)) if n else np.zeros(len(kinds), dtype=int)
    answered, lost = int(counts[0]), int(counts[kinds.index("lost")])
    explicit = n - answered - lost
    ledger = Ledger(sent=n, answered=answered, errors=explicit, lost=lost, balanced=lost == 0)
    covenants = []
    for name in dict.fromkeys(o.covenants):
        classes = [i for i, c in enumerate(o.covenants) if c == name]
        m = np.isin(o.cls, classes)
        target = o.targets_ms[classes[0]]
        lat = o.latency_ms[m]
        within = int(np.count_nonzero(lat <= target))
        broken: dict[str, int] = {}
        for (ci, term), v in sorted(o.broken.items()):
            if ci in classes and term:
                broken[term] = broken.get(term, 0) + v
        sent = int(m.sum())
        covenants.append(CovenantStats(
            covenant=name, sent=sent, answered=int(np.count_nonzero(o.error[m] == 0)),
            errors=int(np.count_nonzero(o.error[m] != 0)), latency=_latency(lat), latency_target_ms=target,
            slo_attainment=round(within / max(1, sent), 6), cost_usd=round(float(o.cost_usd[m].sum()), 6),
            fragments=sum(o.fragments_ok[i] for i in classes), broken_terms=broken))
    run_s = max(o.duration_s, 1e-9)
    pools = [PoolStats(name=p.name, simulates=p.simulates, pool_class=p.pool_class, accelerators=p.accelerators,
                       capacity=p.capacity, strikes=p.strikes, failures=p.failures, preemptions=p.preemptions,
                       lost=p.lost, utilisation=round(p.busy_s / (p.capacity * run_s), 6),
                       cost_usd=round(p.cost_usd, 6), fleet_usd=round(p.fleet_usd, 4)) for p in o.pools]
    fleet = sum(p.fleet_usd for p in o.pools)
    per_day = o.ledger_usd * _DAY_S / run_s
    budget = s.budget_usd_per_day
    cost = Cost(total_usd=round(o.ledger_usd, 6), per_1k_queries_usd=round(1000 * o.ledger_usd / max(1, n), 6),
                per_mtok_usd=round(1e6 * o.ledger_usd / max(1, o.tokens_in + o.tokens_out), 6),
                per_day_usd=round(per_day, 4), budget_usd_per_day=budget,
                within_budget=None if budget is None else per_day <= budget, fleet_usd=round(fleet, 4),
                fleet_per_day_usd=round(fleet * _DAY_S / run_s, 4))
    p50, p95, p99 = _bucket_percentiles(o)
    edges = o.series.edges
    width = np.diff(edges)
    util = {p.name: [round(float(x), 6) for x in o.series.busy[i] / (p.capacity * np.maximum(width, 1e-9))]
            for i, p in enumerate(o.pools)}
    plots = Plots(t_s=[round(float(x), 3) for x in edges[:-1]], p50_ms=p50, p95_ms=p95, p99_ms=p99,
                  cost_usd=[round(float(x), 8) for x in o.series.cost], utilisation=util)
    r = Report(
        scenario=s.name, mode=o.mode, policy=o.policy, seed=s.seed, duration_s=o.duration_s, ledger=ledger,
        throughput_qps=round(answered / run_s, 4), peak_concurrency=_peak_concurrency(o),
        latency=_latency(o.latency_ms),
        allocation=_latency(o.alloc_ms.astype(np.float64)),
        errors={k: int(counts[i]) for i, k in enumerate(kinds) if i and counts[i]},
        error_rate=round(explicit / max(1, n), 8), fallbacks=int(np.count_nonzero(o.fallback & (o.error == 0))),
        cost=cost, covenants=covenants, pools=pools, checks=[], plots=plots, faults=list(o.faults),
        variant=o.variant)
    if s.variants and o.mode == "virtual":
        r.notes.append("the scenario's variants are compared in live replay only (virtual time models neither "
                       "answer quality nor cascades nor hedges); this run serves its classes without a variant")
    r.checks = _checks(o, r)
    return r


def markdown(r: Report) -> str:
    c, led = r.cost, r.ledger
    variant = f", variant {r.variant}" if r.variant else ""
    lines = [f"# Replay report: {r.scenario} ({r.mode}, policy {r.policy}{variant}, seed {r.seed})", "",
             f"- run: {r.duration_s:g} s of scenario time; {led.sent} queries sent, {led.answered} answered, "
             f"{led.errors} explicit errors, {led.lost} lost: **{'balanced' if led.balanced else 'NOT BALANCED'}**",
             f"- throughput: {r.throughput_qps:,.2f} answers/s; peak concurrency {r.peak_concurrency:,} queries; "
             f"fallbacks taken: {r.fallbacks}",
             f"- latency: p50 {r.latency.p50_ms:,.1f} ms, p95 {r.latency.p95_ms:,.1f} ms, "
             f"p99 {r.latency.p99_ms:,.1f} ms;"
             f" allocation p95 {r.allocation.p95_ms:,.2f} ms",
             f"- errors: {', '.join(f'{k} {v}' for k, v in r.errors.items()) or 'none'} "
             f"(explicit error rate {r.error_rate:.4%})",
             f"- cost charged: ${c.total_usd:,.4f} (${c.per_1k_queries_usd:,.4f} per 1,000 queries, "
             f"${c.per_mtok_usd:,.4f} per million tokens); ${c.per_day_usd:,.2f} per day"
             + (f" against a budget of ${c.budget_usd_per_day:,.2f}: **{'within' if c.within_budget else 'OVER'}**"
                if c.budget_usd_per_day is not None else ""),
             f"- renting every time-priced accelerator for the run: ${c.fleet_usd:,.2f} "
             f"(${c.fleet_per_day_usd:,.2f} per day)",
             f"- faults: {'; '.join(r.faults) or 'none'}", *(f"- note: {n}" for n in r.notes), "",
             "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {k.name} | {'ok' if k.ok else '**FAILED**'} | {k.detail} |" for k in r.checks]
    lines += ["", "## Covenants", "",
              "| covenant | sent | answered | errors | p50 ms | p95 ms | p99 ms | target ms | SLO | cost $ "
              "| broken terms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in r.covenants:
        broken = ", ".join(f"{k} {n}" for k, n in v.broken_terms.items()) or "none"
        lines.append(f"| {v.covenant} | {v.sent} | {v.answered} | {v.errors} | {v.latency.p50_ms:,.1f} | "
                     f"{v.latency.p95_ms:,.1f} | {v.latency.p99_ms:,.1f} | {v.latency_target_ms:,.0f} | "
                     f"{v.slo_attainment:.2%} | {v.cost_usd:,.4f} | {broken} |")
    lines += ["", "## Pools", "", *pool_table(r.pools)]
    if r.comparison:
        from .compare import comparison_markdown

        lines += comparison_markdown(r)
    if r.baselines:
        lines += ["", "## Baselines (same scenario and seed)", "",
                  "| policy | answered | errors | p50 ms | p95 ms | cost/day $ | SLO (min over covenants) | "
                  "terms broken | checks |", "|---|---|---|---|---|---|---|---|---|"]
        for b in [r, *r.baselines]:
            n_broken = sum(sum(v.broken_terms.values()) for v in b.covenants)
            slo = min((v.slo_attainment for v in b.covenants), default=0.0)
            lines.append(f"| {b.policy} | {b.ledger.answered} | {b.ledger.errors} | {b.latency.p50_ms:,.1f} | "
                         f"{b.latency.p95_ms:,.1f} | {b.cost.per_day_usd:,.2f} | {slo:.2%} | {n_broken} | "
                         f"{sum(k.ok for k in b.checks)}/{len(b.checks)} |")
    return "\n".join(lines) + "\n"


def pool_table(pools: list[PoolStats]) -> list[str]:
    lines = ["| pool | stands for | class | accel. | slots | strikes | failed | preempted | lost | util. | cost $ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in pools:
        lines.append(f"| {p.name} | {p.simulates} | {p.pool_class} | {p.accelerators} | {p.capacity} | {p.strikes} | "
                     f"{p.failures} | {p.preemptions} | {p.lost} | {p.utilisation:.1%} | {p.cost_usd:,.4f} |")
    return lines


def write_report(r: Report, out: str | Path, *, plots: bool = True) -> list[Path]:
    """report.json, report.md and (with the replay extra) latency/cost/utilisation PNGs in ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(r), indent=2))
    (d / "report.md").write_text(markdown(r))
    written = [d / "report.json", d / "report.md"]
    if plots:
        from .plots import write_plots

        written += write_plots(r, d)
    return written
