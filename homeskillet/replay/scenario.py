"""Scenarios (``scenarios/*.toml``): traffic, fleet and faults to rehearse, strict like covenants.

A scenario says how queries arrive (constant, Poisson, bursts, or a JSONL trace), what they are
(classes of queries, each under a covenant template with optional overrides, with prompt/output
sizes, a share of multi-question queries and tenants), which pools serve them (standing in for
which provider simulator, with capacity, prices, latency and failure settings), what goes wrong
when (outages, latency spikes, preemption storms, a NATS node or a worker killed), and which
covenant terms must hold. An unknown key is an error naming the file and the key; inconsistent
values are errors naming the key and what to do.

A fleet entry may say how right its answers are (``answers``: ``homeskillet.sims.answers.AnswerModel``'s
fields: quality, vary_wrong, logprobs, confidence ranges, seed), so strategies that react to answer
quality (cascade, ensemble) can be rehearsed. ``[[variants]]`` compare ways of serving the same
traffic: each variant's ``overrides`` are laid on every class's covenant overrides and the scenario
runs once per variant on the same seed and arrivals (live replay); the report compares each with
the reference variant (``expect.reference``, else the first): cost, latency, and whether it gave the
same answers.

``[short]`` is the shortened form tests and quick live runs use: the same scenario, fewer seconds,
a scaled rate and fleet, faults moved to the same relative times.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..covenant import POOL_CLASSES, CovenantBook, merge_overrides
from ..errors import HomeskilletError
from ..sims.answers import AnswerModel
from ..strict import StrictError, convert_strict, load_toml
from ..wire import Covenant, Query

__all__ = [
    "Arrivals",
    "Burst",
    "Expect",
    "Fault",
    "FleetPool",
    "QueryClass",
    "Scenario",
    "ScenarioError",
    "Short",
    "Stack",
    "Template",
    "Variant",
    "default_scenario_dir",
    "describe",
    "load_scenario",
    "shorten",
    "with_variant",
]

SIMULATORS = ("echo", "hostedai", "vastai", "ionet", "runpod", "tpu", "openrouter", "ollama", "mlx")
FAULT_KINDS = ("outage", "latency_spike", "preemption_storm", "nats_kill", "worker_kill")


class ScenarioError(HomeskilletError):
    """A scenario file does not fit its schema or is inconsistent; the message names file and key."""

    code = "invalid_scenario"
    status = 422


class _S(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Burst(_S, kw_only=True):
    at_s: float
    duration_s: float
    factor: float  # the rate is multiplied by this while the burst lasts


class Arrivals(_S, kw_only=True):
    process: Literal["constant", "poisson", "bursts", "trace"] = "poisson"
    rate_qps: float = 10.0  # mean arrivals per second (constant, poisson, bursts' base rate)
    diurnal_amplitude: float = 0.0  # 0..1: the rate swings ±this share over a day, peaking at 14:00
    bursts: list[Burst] = []
    trace: str = ""  # JSONL, one {"t": seconds, "class"?: name, "tenant"?: name} per line; relative to the file


class Template(_S, kw_only=True):
    prompt_tokens: int
    max_tokens: int  # the query's max_tokens; the pools generate this many (the bids are priced on it)
    weight: float = 1.0


class QueryClass(_S, kw_only=True):
    name: str
    share: float  # of all queries; the shares add up to 1
    covenant: str  # a covenant template name
    overrides: dict[str, Any] = {}  # per-query covenant overrides, exactly as a Query carries them
    templates: list[Template]
    multi_question_share: float = 0.0  # queries holding several questions, struck as separate fragments
    max_questions: int = 3
    tenants: int | list[str] = 1  # names, or a count: "<class>-01" …


class FleetPool(_S, kw_only=True):
    name: str  # "<provider>/<pool>", e.g. "vastai/rtx4090-spot"
    simulates: str  # the provider this pool stands for (its simulator, or its connector when there is one)
    pool_class: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    accelerator: Literal["gpu", "tpu", "cpu"] = "gpu"
    gpu_model: str = ""
    vram_mb: int = 0
    tflops: float = 0.0
    region: str = ""
    preemptible: bool = False
    accelerators: int = 1  # GPUs or TPU cores in the pool (an API pool: concurrent requests it takes)
    slots_per_accelerator: int = 1  # strikes one accelerator runs at once (batching)
    usd_per_hour: float = 0.0  # per accelerator, for time-priced pools
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    start_ms: float = 50.0  # time to first token
    ms_per_token: float = 10.0
    jitter_sigma: float = 0.2  # lognormal jitter on each strike's duration
    tail_rate: float = 0.0  # share of strikes that take tail_factor times longer
    tail_factor: float = 5.0
    failure_rate: float = 0.0  # share of strikes the provider fails (5xx, timeouts)
    preempt_rate: float = 0.0  # share of strikes evicted mid-run (preemptible pools only)
    queue_limit: int = -1  # strikes accepted beyond capacity; -1 = as many as the capacity
    # How right its answers are and how confident it says it is (live replay); None: always right, no logprobs.
    answers: AnswerModel | None = None

    @property
    def capacity(self) -> int:
        return self.accelerators * self.slots_per_accelerator


class Fault(_S, kw_only=True):
    at_s: float
    kind: Literal["outage", "latency_spike", "preemption_storm", "nats_kill", "worker_kill"]
    pool: str = ""  # outage, latency_spike, worker_kill: the pool; preemption_storm: "" = every preemptible pool
    duration_s: float = 60.0  # how long it lasts; nats_kill / worker_kill: until the restart
    factor: float = 5.0  # latency_spike: the multiplier
    share: float = 0.5  # preemption_storm: share of running preemptible strikes evicted
    node: int = 0  # nats_kill: which cluster node (0-based)


class Stack(_S, kw_only=True):
    nats_nodes: int = 1  # live replay: a NATS cluster of this many nodes
    quote_interval_ms: int = 500
    silence_ms: int = 1500
    overhead_ms: float = 2.0  # virtual time: analysis + award + NATS hops per strike (measured live)


class Short(_S, kw_only=True):
    duration_s: float = 5.0
    rate_scale: float = 1.0  # arrival rate multiplier
    fleet_scale: float = 1.0  # accelerators multiplier (at least one each)
    latency_scale: float = 1.0  # start_ms and ms_per_token multiplier
    max_queries: int = 0


class Variant(_S, kw_only=True):
    name: str
    overrides: dict[str, Any] = {}  # laid on every class's covenant overrides (tables merged key by key)


class Expect(_S, kw_only=True):
    """What must hold at the end of a run (tests assert it; reports show it). With variants, the
    first four hold for every variant, the rest for every variant against the reference."""

    max_error_rate: float = 0.0  # explicit errors / sent
    keep_terms: list[str] = []  # covenant terms no answered fragment may break
    min_slo: dict[str, float] = {}  # covenant -> least share answered within its latency target
    max_cost_per_day_usd: float | None = None  # charged (ledger) cost scaled to a day
    reference: str = ""  # the variant the others are compared with; "" = the first
    max_cost_ratio: float | None = None  # charged cost / the reference's
    max_p99_ratio: float | None = None  # p99 latency / the reference's
    min_agreement: float | None = None  # share of queries (answered by both) given the reference's answer text
    min_agreement_kept: float | None = None  # the same, over the queries a cascade kept below its last tier

    def compares(self) -> bool:
        return any(v is not None for v in (self.max_cost_ratio, self.max_p99_ratio, self.min_agreement,
                                           self.min_agreement_kept))


class Scenario(_S, kw_only=True):
    name: str = ""
    description: str = ""
    seed: int = 0
    duration_s: float
    max_queries: int = 0  # 0: bounded by duration only
    budget_usd_per_day: float | None = None
    arrivals: Arrivals = msgspec.field(default_factory=Arrivals)
    classes: list[QueryClass]
    pools: list[FleetPool]
    faults: list[Fault] = []
    variants: list[Variant] = []
    stack: Stack = msgspec.field(default_factory=Stack)
    short: Short = msgspec.field(default_factory=Short)
    expect: Expect = msgspec.field(default_factory=Expect)
    source: str = ""  # the file it came from (set by load_scenario)

    def tenants(self, cls: QueryClass) -> list[str]:
        if isinstance(cls.tenants, int):
            return [f"{cls.name}-{i:02d}" for i in range(1, cls.tenants + 1)]
        return list(cls.tenants)

    def covenant(self, cls: QueryClass, book: CovenantBook) -> Covenant:
        """The covenant a query of ``cls`` is served under (the same resolve the gateway uses)."""
        return book.resolve(Query(covenant=cls.covenant, overrides=cls.overrides or None))

    def covenant_labels(self) -> list[str]:
        """Per class, the name its covenant is reported under: the template's name, or
        ``name/class`` where classes share a template with different overrides."""
        out = []
        for c in self.classes:
            same = [d for d in self.classes if d.covenant == c.covenant]
            alike = all(d.overrides == c.overrides for d in same)
            out.append(c.covenant if alike else f"{c.covenant}/{c.name}")
        return out

    def reference(self) -> str:
        """The variant the others are compared with ("" without variants)."""
        return self.expect.reference or (self.variants[0].name if self.variants else "")

    def trace_path(self) -> Path:
        p = Path(self.arrivals.trace)
        return p if p.is_absolute() else Path(self.source).parent / p


def describe(f: Fault, at_s: float | None = None) -> str:
    """One line for a report: what happened when."""
    what = {"outage": f"outage of {f.pool} for {f.duration_s:g} s",
            "latency_spike": f"latency ×{f.factor:g} on {f.pool} for {f.duration_s:g} s",
            "preemption_storm": f"preemption storm evicting {f.share:.0%} of {f.pool or 'every preemptible pool'}",
            "nats_kill": f"NATS node {f.node} killed, restarted after {f.duration_s:g} s",
            "worker_kill": f"worker of {f.pool} killed, restarted after {f.duration_s:g} s"}[f.kind]
    return f"t={f.at_s if at_s is None else at_s:.2f}s {what}"


def default_scenario_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "scenarios"


def _check(s: Scenario, book: CovenantBook) -> None:
    src = s.source or "scenario"

    def bad(key: str, why: str) -> ScenarioError:
        return ScenarioError(f"{src}: {key}: {why}", term=key)

    if s.duration_s <= 0:
        raise bad("duration_s", "must be > 0")
    a = s.arrivals
    if a.process != "trace" and a.rate_qps <= 0:
        raise bad("arrivals.rate_qps", "must be > 0")
    if not 0 <= a.diurnal_amplitude < 1:
        raise bad("arrivals.diurnal_amplitude", "must be in 0..1 (exclusive)")
    if a.process == "bursts" and not a.bursts:
        raise bad("arrivals.bursts", "process 'bursts' needs at least one [[arrivals.bursts]]")
    for i, b in enumerate(a.bursts):
        if b.duration_s <= 0 or b.factor <= 0:
            raise bad(f"arrivals.bursts[{i}]", "duration_s and factor must be > 0")
    if a.process == "trace":
        if not a.trace:
            raise bad("arrivals.trace", "process 'trace' needs a JSONL file")
        if not s.trace_path().is_file():
            raise bad("arrivals.trace", f"no such file {s.trace_path()}")
    if not s.classes:
        raise bad("classes", "at least one [[classes]] is needed")
    names = [c.name for c in s.classes]
    if len(set(names)) != len(names):
        raise bad("classes", f"class names repeat: {names}")
    total = sum(c.share for c in s.classes)
    if abs(total - 1.0) > 1e-6:
        raise bad("classes.share", f"the shares add up to {total:g}; make them add up to 1")
    for i, c in enumerate(s.classes):
        where = f"classes[{i}] ({c.name})"
        if c.share < 0:
            raise bad(f"{where}.share", "must be ≥ 0")
        if not c.templates:
            raise bad(f"{where}.templates", "at least one [[classes.templates]] is needed")
        for j, t in enumerate(c.templates):
            if t.prompt_tokens < 1 or not 1 <= t.max_tokens <= 32768 or t.weight <= 0:
                raise bad(f"{where}.templates[{j}]", "prompt_tokens ≥ 1, max_tokens in 1..32768, weight > 0")
        if not 0 <= c.multi_question_share <= 1 or c.max_questions < 2:
            raise bad(f"{where}.multi_question_share", "share in 0..1 and max_questions ≥ 2")
        if (isinstance(c.tenants, int) and c.tenants < 1) or (isinstance(c.tenants, list) and not c.tenants):
            raise bad(f"{where}.tenants", "at least one tenant")
        try:
            s.covenant(c, book)
        except HomeskilletError as exc:
            raise bad(f"{where}.covenant", exc.message) from None
    pools = [p.name for p in s.pools]
    if not pools:
        raise bad("pools", "at least one [[pools]] is needed")
    if len(set(pools)) != len(pools):
        raise bad("pools", f"pool names repeat: {pools}")
    if len(pools) > 62:
        raise bad("pools", "at most 62 pools (group identical accelerators into one pool)")
    for i, p in enumerate(s.pools):
        where = f"pools[{i}] ({p.name})"
        if p.simulates not in SIMULATORS:
            raise bad(f"{where}.simulates", f"{p.simulates!r} is not one of {', '.join(SIMULATORS)}")
        if p.pool_class not in POOL_CLASSES:
            raise bad(f"{where}.pool_class", f"{p.pool_class!r} is not one of {', '.join(POOL_CLASSES)}")
        if p.accelerators < 1 or p.slots_per_accelerator < 1:
            raise bad(f"{where}.accelerators", "accelerators and slots_per_accelerator must be ≥ 1")
        for key in ("failure_rate", "preempt_rate", "tail_rate"):
            if not 0 <= getattr(p, key) <= 1:
                raise bad(f"{where}.{key}", "must be in 0..1")
        if p.preempt_rate > 0 and not p.preemptible:
            raise bad(f"{where}.preempt_rate", "only a preemptible pool is preempted; set preemptible = true")
    for i, f in enumerate(s.faults):
        where = f"faults[{i}] ({f.kind})"
        if not 0 <= f.at_s < s.duration_s:
            raise bad(f"{where}.at_s", f"{f.at_s} is outside the run (0..{s.duration_s:g} s)")
        if f.kind in ("outage", "latency_spike", "worker_kill") and f.pool not in pools:
            raise bad(f"{where}.pool", f"{f.pool!r} is not a pool of this scenario ({', '.join(pools)})")
        if f.kind == "nats_kill" and not 1 <= f.node < s.stack.nats_nodes:
            raise bad(f"{where}.node", f"node {f.node} cannot be killed with stack.nats_nodes = {s.stack.nats_nodes}: "
                      "node 0 carries the clients (a request in flight through it is lost, a client would retry); "
                      "run a cluster (nats_nodes ≥ 2) and kill a node ≥ 1")
        if f.duration_s <= 0 or f.factor <= 0 or not 0 < f.share <= 1:
            raise bad(where, "duration_s > 0, factor > 0 and share in (0, 1]")
    if s.short.duration_s <= 0 or s.short.rate_scale <= 0 or s.short.fleet_scale <= 0 or s.short.latency_scale <= 0:
        raise bad("short", "duration_s and every scale must be > 0")
    _check_variants(s, book, bad)
    for name in s.expect.min_slo:
        if name not in {c.covenant for c in s.classes} | set(s.covenant_labels()):
            raise bad("expect.min_slo", f"{name!r} is not the covenant of any class (or its name/class label: "
                      f"{', '.join(s.covenant_labels())})")


def _check_variants(s: Scenario, book: CovenantBook, bad: Callable[[str, str], ScenarioError]) -> None:
    names = [v.name for v in s.variants]
    if len(set(names)) != len(names) or "" in names:
        raise bad("variants", f"every variant needs a name of its own: {names}")
    if s.variants and len(s.variants) < 2:
        raise bad("variants", "one variant compares with nothing; add the one to compare with (e.g. the plain way)")
    if s.expect.reference and s.expect.reference not in names:
        raise bad("expect.reference", f"{s.expect.reference!r} is not a variant ({', '.join(names) or 'none'})")
    if s.expect.compares() and not s.variants:
        raise bad("expect", "max_cost_ratio, max_p99_ratio, min_agreement and min_agreement_kept compare variants; "
                  "add [[variants]] (the reference and at least one other)")
    e = s.expect
    for key in ("max_cost_ratio", "max_p99_ratio"):
        if (x := getattr(e, key)) is not None and x <= 0:
            raise bad(f"expect.{key}", "must be > 0")
    for key in ("min_agreement", "min_agreement_kept"):
        if (x := getattr(e, key)) is not None and not 0 <= x <= 1:
            raise bad(f"expect.{key}", "must be in 0..1")
    for i, v in enumerate(s.variants):
        try:
            varied = with_variant(s, v.name)
            for c in varied.classes:
                varied.covenant(c, book)
        except HomeskilletError as exc:
            raise bad(f"variants[{i}] ({v.name}).overrides", exc.message) from None


def with_variant(s: Scenario, name: str) -> Scenario:
    """The scenario served the variant's way: its overrides laid on every class's."""
    v = next(v for v in s.variants if v.name == name)
    classes = [msgspec.structs.replace(c, overrides=merge_overrides(c.overrides, v.overrides)) for c in s.classes]
    return msgspec.structs.replace(s, classes=classes)


def load_scenario(path: str | Path, covenants: CovenantBook | None = None) -> Scenario:
    """Decode and check a scenario file; its name is the file's stem unless it says otherwise."""
    p = Path(path)
    try:
        data = load_toml(p)
        data.setdefault("name", p.stem)
        data["source"] = str(p)
        scenario = convert_strict(data, Scenario, str(p))
    except StrictError as exc:
        raise ScenarioError(str(exc), term=exc.key or str(p)) from None
    _check(scenario, covenants or CovenantBook.load())
    return scenario


def shorten(s: Scenario) -> Scenario:
    """The scenario's ``[short]`` form: faults keep their relative place in the shorter run."""
    k = s.short.duration_s / s.duration_s
    fleet = [msgspec.structs.replace(p, accelerators=max(1, round(p.accelerators * s.short.fleet_scale)),
                                     start_ms=p.start_ms * s.short.latency_scale,
                                     ms_per_token=p.ms_per_token * s.short.latency_scale) for p in s.pools]
    faults = [msgspec.structs.replace(f, at_s=f.at_s * k, duration_s=f.duration_s * k) for f in s.faults]
    bursts = [msgspec.structs.replace(b, at_s=b.at_s * k, duration_s=b.duration_s * k) for b in s.arrivals.bursts]
    arrivals = msgspec.structs.replace(s.arrivals, rate_qps=s.arrivals.rate_qps * s.short.rate_scale, bursts=bursts)
    return msgspec.structs.replace(s, duration_s=s.short.duration_s, max_queries=s.short.max_queries,
                                   pools=fleet, faults=faults, arrivals=arrivals)
