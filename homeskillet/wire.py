"""Every message Homeskillet puts on NATS or HTTP, as msgspec Structs.

kw_only is not inherited by msgspec subclasses, so every class says it.

Schema evolution (msgspec's rules): new fields get defaults, no field is removed or retyped, and
unknown fields are ignored on decode, so an old peer and a new peer can talk. ``v`` says which
wire version the sender spoke. Messages that travel in unions are tagged by ``kind``; decoders
are built once here and handlers dispatch with ``match``.

Version 2 added streaming: ``Strike.stream`` asks the pool host for ``StrikeChunk`` messages on
the strike's reply inbox as text arrives (a version-1 host ignores the field and sends only the
result, which carries the whole text); ``AnswerChunk`` is what a streamed query's caller gets
before its ``Answer`` (which gained ``ttft_ms``).

Context travels in the message (``query_id``, ``strike_id``, ``covenant_id``, ``tenant``,
``trace_id``) because contextvars do not reach actor threads.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "WIRE_VERSION",
    "AgentMsg",
    "AgentReply",
    "Allocated",
    "Allocation",
    "AllocationMetrics",
    "AllocationRequest",
    "Answer",
    "AnswerChunk",
    "AnswerStreamMsg",
    "Award",
    "Bid",
    "BudgetStatus",
    "CachePolicy",
    "CallForProposals",
    "CancelStrike",
    "Cascade",
    "Cost",
    "Covenant",
    "Distill",
    "DistillEvent",
    "DistillPair",
    "Ensemble",
    "ErrorReply",
    "Fallback",
    "Fragment",
    "FragmentOutcome",
    "FragmentQuote",
    "FreeAllocation",
    "Freed",
    "Health",
    "Hedge",
    "Lease",
    "MapReduce",
    "Message",
    "MetricsAsk",
    "MetricsReply",
    "Offer",
    "ProviderOffer",
    "Qos",
    "Query",
    "Quote",
    "QuoteReply",
    "RankedBid",
    "Readiness",
    "Refusal",
    "RefusedBy",
    "Rejection",
    "Release",
    "Reservation",
    "ReservationList",
    "Reserve",
    "ReserveRequest",
    "Resources",
    "Route",
    "Strategy",
    "Strike",
    "StrikeCancelled",
    "StrikeChunk",
    "StrikeFailure",
    "StrikeOk",
    "StrikePreemption",
    "StrikeReply",
    "StrikeResult",
    "TenantUsage",
    "Term",
    "Verdict",
    "VerdictMsg",
    "Verdicts",
    "Wire",
    "decode_agent_msg",
    "decode_agent_reply",
    "decode_answer_stream",
    "decode_bid_reply",
    "decode_query",
    "decode_strike",
    "decode_strike_reply",
    "decode_strike_result",
    "decode_verdicts",
    "encode",
]

WIRE_VERSION = 2


class Term(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """A nested value (not sent alone, so untagged)."""


class Wire(msgspec.Struct, kw_only=True, tag_field="kind"):
    """A message sent on its own; tagged so it can sit in a union."""

    v: int = WIRE_VERSION


# --- queries -------------------------------------------------------------------------------------


class Message(Term, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Query(Wire, tag="query", kw_only=True):
    query_id: str = ""
    tenant: str = "default"
    prompt: str | None = None
    messages: list[Message] | None = None
    covenant: str | None = None  # template name; or pick the template by ``model``
    model: str | None = None
    overrides: dict[str, Any] | None = None  # {"qos": {"latency_target_ms": 500}, "max_tokens": 64}
    max_tokens: int | None = None
    temperature: float = 0.0
    trace_id: str = ""


# --- covenants -----------------------------------------------------------------------------------


class Resources(Term, kw_only=True):
    model: str
    min_vram_mb: int = 0
    max_vram_mb: int | None = None
    min_tflops: float = 0.0
    accelerator: Literal["any", "gpu", "tpu", "cpu"] = "any"
    gpu_models: list[str] = []  # empty: any GPU model
    pool_class: str | None = None  # None: the default allocation policy decides


class Qos(Term, kw_only=True):
    latency_target_ms: int = 2000
    hard_deadline_ms: int = 30_000
    priority: int = 50  # 0..100; higher weighs latency over cost
    preemptible: bool = False


class Cost(Term, kw_only=True):
    max_usd_per_request: float | None = None
    max_usd_per_hour: float | None = None
    tenant_budget_usd: float | None = None


class Fallback(Term, kw_only=True):
    # Steps after the primary pool class: pool classes, "provider:<name>", "pool:<name>",
    # "local", "queue" (park until capacity, at most queue_max_wait_ms) or "fail".
    steps: list[str] = msgspec.field(default_factory=lambda: ["local", "fail"])
    queue_max_wait_ms: int = 30_000
    degrade_to: list[str] = []  # smaller models a fallback step may serve instead


class Ensemble(Term, kw_only=True):
    """The same fragment to several pools (one per member step), fused by ``fuse``."""

    members: list[str] = []  # fallback-style steps: pool classes, "provider:<x>", "pool:<name>"
    fuse: Literal["vote", "confidence", "teacher"] = "vote"
    teacher: str = ""  # with fuse = "teacher": the member step whose answer overrides the rest


class Cascade(Term, kw_only=True):
    """Cheapest tier first; escalate while the answer's confidence is below ``threshold``."""

    tiers: list[str] = []  # steps, cheapest first; the last tier's answer is always kept
    threshold: float = 0.7  # 0..1, see homeskillet/strategies/confidence.py for what it measures
    samples: int = 1  # >1: confidence by self-consistency when the pool returns no logprobs


class Hedge(Term, kw_only=True):
    """A duplicate strike to the next-best pool when the first is late past a percentile of its record."""

    enabled: bool = False
    percentile: Literal[50, 90, 95, 99] = 90  # p95 sits on the edge of a ~5 % tail: see docs/benchmarks.md
    min_samples: int = 20  # fewer verdicts than this: hedge after the covenant's latency target


class MapReduce(Term, kw_only=True):
    """Long context: chunks that fit the pools' context window, mapped, then reduced by a model."""

    chunk_tokens: int = 0  # 0: from the smallest context window among the pools that could serve
    max_chunks: int = 64


class Route(Term, kw_only=True):
    """Queries naming no covenant move to ``covenant`` from this complexity (0..1) up."""

    min_complexity: float
    covenant: str


class Strategy(Term, kw_only=True):
    """How a covenant's queries are decomposed and served (each table is optional in TOML)."""

    decompose: list[str] = msgspec.field(default_factory=lambda: ["questions", "long_context"])
    serve: Literal["single", "ensemble", "cascade"] = "single"
    ensemble: Ensemble = msgspec.field(default_factory=Ensemble)
    cascade: Cascade = msgspec.field(default_factory=Cascade)
    hedge: Hedge = msgspec.field(default_factory=Hedge)
    map_reduce: MapReduce = msgspec.field(default_factory=MapReduce)
    route: list[Route] = []


class Distill(Term, kw_only=True):
    """A covenant's ``[distill]`` table: shadow a student beside the teacher that serves the covenant,
    keep the pairs, train the student on them, canary it, promote it or roll it back."""

    enabled: bool = True
    student: str  # the student's model name: an adapter over ``base_model`` once trained
    base_model: str = "smollm2-135m"  # what the local pools serve; the student starts as this
    student_step: str = "local"  # the fallback-style step the student is struck on
    mode: Literal["async", "sync"] = "async"  # async: shadow after the teacher's answer is returned
    shadow_share: float = 1.0  # 0..1 of teacher-served fragments also struck on the student
    confidence_threshold: float = 0.8  # a pair trains only when the teacher was at least this sure
    max_examples: int = 10_000  # pairs kept per (tenant, student); the oldest leave first
    agreement: Literal["exact", "semantic"] = "exact"  # short-form answers: exact; free-form: semantic
    semantic_threshold: float = 0.8  # cosine (MiniLM) at which a free-form answer counts as agreeing
    auto_train: bool = False
    training_frequency: int = 1000  # with auto_train: train again after this many new pairs
    train_steps: int = 80
    lora_rank: int = 8
    batch_size: int = 4
    learning_rate: float = 2e-4
    validation_split: float = 0.2
    promote_at: float = 0.85  # held-out agreement a trained student needs to start its canary
    canary_share: float = 0.1  # 0..1 of the family's live fragments served by a canary student
    canary_min_samples: int = 50  # shadowed canary verdicts before promotion is decided
    check_share: float = 0.1  # 0..1 of a promoted student's answers also struck on the teacher (canary: all)
    rollback_below: float = 0.75  # live agreement under which a canary or promoted student goes back
    share_across_tenants: bool = False  # a tenant's pairs may train a student other tenants use


class CachePolicy(Term, kw_only=True):
    """The fragment result cache: per tenant, exact by hash, semantic by embedding similarity."""

    mode: Literal["off", "exact", "semantic"] = "off"
    threshold: float | None = None  # cosine similarity a semantic hit needs; None: the embedder's calibrated one
    ttl_s: float = 3600.0


class Covenant(Term, kw_only=True):
    name: str
    resources: Resources
    qos: Qos = msgspec.field(default_factory=Qos)
    cost: Cost = msgspec.field(default_factory=Cost)
    fallback: Fallback = msgspec.field(default_factory=Fallback)
    fusion: str = "ordered"  # how parts become one answer: "ordered" or "reduce" (a model combines them)
    strategy: Strategy = msgspec.field(default_factory=Strategy)
    cache: CachePolicy = msgspec.field(default_factory=CachePolicy)
    max_tokens: int = 256
    negotiation: Literal["quotes", "cfp"] = "quotes"  # standing quotes (hot path) or full Contract Net
    distill: Distill | None = None  # knowledge distillation into a student (homeskillet/distill/)
    covenant_id: str = ""  # name + digest of the terms, set by covenant.resolve()


# --- fragments and offers ------------------------------------------------------------------------


class Fragment(Term, kw_only=True):
    fragment_id: str
    query_id: str
    index: int
    prompt: str
    context: list[Message] = []
    model: str
    hash: str  # sha256 of canonical content + model: exact identity
    fingerprint: int  # 64-bit simhash: similarity sketch
    prompt_tokens: int
    max_tokens: int
    temperature: float = 0.0
    role: str = "whole"  # whole | question | chunk | reduce: what the analysis made it
    part: int = -1  # the query part it serves (-1: same as index)


class Offer(Term, kw_only=True):
    """What a pool offers right now: the terms a quote or bid is made of."""

    pool: str
    provider: str
    pool_class: str
    models: list[str]  # ["*"] serves any model name
    accelerator: Literal["gpu", "tpu", "cpu", "api"] = "gpu"  # api: a hosted model API (OpenRouter)
    gpu_model: str = ""
    vram_mb: int = 0
    tflops: float = 0.0
    region: str = ""
    preemptible: bool = False
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    usd_per_hour: float = 0.0
    start_ms: float = 0.0  # predicted time to first token
    ms_per_token: float = 0.0
    free_slots: int = 0
    queue_depth: int = 0
    warm_models: list[str] = []
    reliability: float = 1.0  # from the track record: share of verdicts kept
    context_tokens: int = 0  # the model's context window here (prompt + completion); 0 = unknown
    # Observed strike latency percentiles from the track record (0 = not enough verdicts yet).
    latency_samples: int = 0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0


class Quote(Wire, tag="quote", kw_only=True):
    offer: Offer
    seq: int  # bumps whenever the offer changes; the lease commit re-validates against it
    issued_at_ms: int
    expires_at_ms: int


class CallForProposals(Wire, tag="cfp", kw_only=True):
    cfp_id: str
    query_id: str
    covenant: Covenant
    model: str
    prompt_tokens: int
    max_tokens: int
    reply_by_ms: int


class Bid(Wire, tag="bid", kw_only=True):
    cfp_id: str = ""
    pool: str
    offer: Offer
    model: str  # the model the pool will run (may be a covenant-allowed degradation)
    price_usd: float
    predicted_start_ms: float
    predicted_total_ms: float
    tokens_per_s: float
    quote_seq: int
    expires_at_ms: int


class Refusal(Wire, tag="refusal", kw_only=True):
    cfp_id: str = ""
    pool: str
    term: str  # the covenant term the pool cannot meet, e.g. "resources.min_vram_mb"
    detail: str


class Award(Wire, tag="award", kw_only=True):
    cfp_id: str
    bid: Bid
    query_id: str
    strike_id: str


class Rejection(Wire, tag="rejection", kw_only=True):
    cfp_id: str
    pool: str
    reason: str


class Lease(Wire, tag="lease", kw_only=True):
    lease_id: str
    pool: str
    strike_id: str
    price_usd: float
    expires_at_ms: int


# --- provider allocations and reservations ------------------------------------------------------
# Connectors (providers/base.py) speak these; they travel inside strikes and agent messages.

class ProviderOffer(Term, kw_only=True):
    """One thing a provider will rent or serve now, in our units (MB, USD per hour or per
    million tokens), whatever units the provider's API uses."""

    offer_id: str
    accelerator: str = "gpu"  # gpu | tpu | cpu | api
    gpu_model: str = ""
    count: int = 1  # accelerators (GPUs, TPU chips) in the unit
    vram_mb: int = 0  # per accelerator
    tflops: float = 0.0
    region: str = ""
    usd_per_hour: float = 0.0  # for the whole unit (count accelerators)
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    preemptible: bool = False
    available: int = 1  # units that can be had now
    models: list[str] = []  # models served (hosted APIs), or present on the node
    warm_models: list[str] = []  # loaded and ready without a cold start


class AllocationRequest(Term, kw_only=True):
    model: str = ""
    gpu_model: str = ""  # "" = any that meets the minimums
    accelerator: str = "gpu"
    count: int = 1
    min_vram_mb: int = 0
    max_vram_mb: int = 0  # 0 = no upper bound
    min_tflops: float = 0.0
    region: str = ""
    duration_s: int = 3600
    preemptible: bool = False  # interruptible / spot / bid allowed
    bid_usd_per_hour: float = 0.0  # the bid for an interruptible rental; 0 = the market minimum
    max_usd_per_hour: float = 0.0  # 0 = no ceiling
    offer_id: str = ""  # from quote(); "" = the connector picks the cheapest that fits
    tenant: str = "default"
    workload: str = ""
    ready_timeout_s: float = 600.0


class Allocation(Term, kw_only=True):
    allocation_id: str
    provider: str
    status: str = "running"  # pending | running | preempted | released | failed
    endpoint: str = ""  # inference base URL when the provider gives one
    model: str = ""
    gpu_model: str = ""
    count: int = 1
    region: str = ""
    usd_per_hour: float = 0.0
    preemptible: bool = False
    created_at: float = 0.0  # unix seconds
    expires_at: float = 0.0  # 0 = until released
    detail: dict[str, Any] = {}  # provider-specific ids (instance id, operation name, …)


class AllocationMetrics(Term, kw_only=True):
    allocation_id: str
    status: str = "running"
    gpu_utilization: float | None = None  # 0..1
    memory_used_mb: float | None = None
    inference_count: int = 0
    average_latency_ms: float | None = None
    uptime_s: float = 0.0
    cost_usd: float | None = None  # accrued so far, when the provider says


class Release(Term, kw_only=True):
    allocation_id: str
    billed_usd: float | None = None  # the provider's bill for the whole allocation, when known
    detail: dict[str, Any] = {}


class Health(Term, kw_only=True):
    ok: bool
    detail: str = ""
    latency_ms: float = 0.0
    warm_models: list[str] = []
    active: int = 0  # requests in flight that we know of
    load: float = 0.0  # 0 = idle; higher is busier (provider-specific score)


class ReserveRequest(Term, kw_only=True):
    """Reserve compute ahead of use (``POST /api/v1/compute/reserve``, the ``reserve`` tool)."""

    provider: str = "auto"  # "auto" or a provider name (hostedai, vastai, runpod, ionet, tpu, ...)
    compute_type: Literal["gpu", "tpu", "cpu"] = "gpu"
    gpu_model: str = ""
    count: int = 1
    duration_s: int = 3600
    max_cost_per_hr: float = 0.0  # 0 = no ceiling; checked at every failover step
    enable_hybrid: bool = False  # may fall back to any provider, then local
    fallback_providers: list[str] = []
    model: str = ""
    pool_id: str = ""  # a named pool, e.g. hosted.ai's "standard-us-east"
    min_vram_mb: int = 0
    max_vram_mb: int = 0
    min_tflops: float = 0.0
    preemptible: bool = False
    local_port: bool = False  # also serve it on a dedicated local port (compatibility option)
    tenant: str = "default"
    metadata: dict[str, str] = {}


class Reservation(Wire, tag="reservation", kw_only=True):
    reservation_id: str
    tenant: str
    status: Literal["pending", "active", "released", "failed"] = "active"
    provider: str = ""
    pool: str = ""
    model: str = ""
    gpu_model: str = ""
    count: int = 1
    usd_per_hour: float = 0.0
    endpoint_subject: str = ""  # NATS request-reply: a Query in, an Answer out
    endpoint_path: str = ""  # HTTP: /api/v1/inference/{reservation_id}
    local_port: int | None = None
    created_at: float = 0.0
    expires_at: float = 0.0
    tried: list[str] = []  # failover steps passed over, each with its reason
    allocation_id: str = ""  # the provider's id
    allocation: Allocation | None = None
    billed_usd: float | None = None  # set on release
    metadata: dict[str, str] = {}


class ReservationList(Wire, tag="reservations", kw_only=True):
    """``GET /api/v1/allocations``: the caller's own reservations (this orchestrator's), newest first."""

    tenant: str
    reservations: list[Reservation] = []


class Reserve(Wire, tag="reserve", kw_only=True):
    """To a pool host (``hs.agent.<pool>``): allocate at the provider."""

    reservation_id: str
    tenant: str
    want: AllocationRequest


class FreeAllocation(Wire, tag="free", kw_only=True):
    allocation: Allocation


class MetricsAsk(Wire, tag="metrics_ask", kw_only=True):
    allocation: Allocation


class Allocated(Wire, tag="allocated", kw_only=True):
    allocation: Allocation


class Freed(Wire, tag="freed", kw_only=True):
    release: Release


class MetricsReply(Wire, tag="metrics", kw_only=True):
    metrics: AllocationMetrics


# --- strikes -------------------------------------------------------------------------------------


class Strike(Wire, tag="strike", kw_only=True):
    strike_id: str  # idempotency key: delivered twice, runs once, charged once
    query_id: str
    tenant: str
    covenant_id: str
    pool: str
    fragment: Fragment
    model: str
    lease_id: str | None = None  # from a Contract Net award; None: commit from the quote
    quote_seq: int = 0
    max_price_usd: float = 0.0  # the awarded price; the commit refuses to charge more
    deadline_ms: int = 0  # absolute epoch ms; 0 = none
    attempt: int = 0
    trace_id: str = ""
    allocation: Allocation | None = None  # run on this reservation's allocation, not the pool's own
    stream: bool = False  # v2: send StrikeChunk messages on the reply inbox as the text arrives


class StrikeOk(Wire, tag="strike_ok", kw_only=True):
    strike_id: str
    pool: str
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    duplicate: bool = False  # this reply is the cached result of an earlier delivery
    logprob_mean: float | None = None  # mean token log-probability, when the provider returns logprobs
    ttft_ms: float | None = None  # a streamed strike: from the host taking it (slot wait included) to its first text


class StrikeChunk(Wire, tag="strike_chunk", kw_only=True):
    """A piece of a streamed strike's text, on the strike's reply inbox beside the heartbeats.
    ``offset`` is where ``text`` starts in the whole text (in characters, i.e. Unicode code points),
    so a receiver can tell a gap or a repeat; the StrikeOk that ends the stream carries the whole text."""

    strike_id: str
    pool: str
    offset: int
    text: str


class StrikeFailure(Wire, tag="strike_failed", kw_only=True):
    strike_id: str
    pool: str
    code: str
    message: str
    retryable: bool = True


class StrikePreemption(Wire, tag="strike_preempted", kw_only=True):
    strike_id: str
    pool: str
    message: str
    billed_usd: float = 0.0  # what the provider bills for the evicted part


class StrikeCancelled(Wire, tag="strike_cancelled", kw_only=True):
    """The strike was cancelled mid-run (a hedge lost the race); billed is what the provider bills."""

    strike_id: str
    pool: str
    message: str = ""
    billed_usd: float = 0.0


class CancelStrike(Wire, tag="cancel_strike", kw_only=True):
    """Stop a running strike (sent on the pool's agent subject; the host running it answers the
    strike's own reply inbox with StrikeCancelled)."""

    strike_id: str
    pool: str
    reason: str = ""


StrikeResult = StrikeOk | StrikeFailure | StrikePreemption | StrikeCancelled
StrikeReply = StrikeChunk | StrikeOk | StrikeFailure | StrikePreemption | StrikeCancelled


class Verdict(Wire, tag="verdict", kw_only=True):
    strike_id: str
    query_id: str
    tenant: str
    pool: str
    covenant_id: str
    kept: bool
    broken_terms: list[str] = []
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    predicted_ms: float = 0.0
    preempted: bool = False
    failed: bool = False
    cancelled: bool = False  # a hedge loser: latency_ms is a lower bound (censored)


class Verdicts(Wire, tag="verdicts", kw_only=True):
    """Several verdicts for one pool, published as one message (wire version 1 peers that only
    know ``Verdict`` still get single verdicts as before)."""

    verdicts: list[Verdict]


VerdictMsg = Verdict | Verdicts


# --- answers -------------------------------------------------------------------------------------


class FragmentOutcome(Term, kw_only=True):
    fragment_id: str
    index: int
    pool: str
    strike_id: str
    model: str
    step: str  # the fallback step that served it ("standard", "local", …)
    why: str  # why this pool won
    cost_usd: float
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kept: bool = True
    broken_terms: list[str] = []
    tried: list[str] = []  # pools or steps tried before, with the reason each failed
    degraded: bool = False
    # How this fragment counted in the answer. role: what it was struck as (question, chunk, reduce,
    # ensemble, cascade, hedge, whole); contribution: a sentence, e.g. "won the vote 2/3".
    role: str = "whole"
    contribution: str = "answer"
    contributed: bool = True  # False: struck (and charged) but its text is not in the answer
    part: int = -1  # the query part it served
    confidence: float | None = None  # 0..1 when the strike gave evidence; see strategies/confidence.py
    cached: str = ""  # "exact" | "semantic" when served from the result cache (cost 0)


class Answer(Wire, tag="answer", kw_only=True):
    query_id: str
    tenant: str
    text: str
    covenant: str
    covenant_id: str
    fusion: str
    fragments: list[FragmentOutcome]
    cost_usd: float
    latency_ms: float
    complexity: float | None = None  # the analyzer's 0..1 score
    strategy: str = ""  # how it was served, e.g. "questions+cascade" or "long_context+single+hedge"
    ttft_ms: float | None = None  # a streamed answer: from accepting the query to its first text sent


class AnswerChunk(Wire, tag="answer_chunk", kw_only=True):
    """A piece of a streamed answer's text (NATS ingress, ``Hs-Stream: 1``); ``offset`` is where it
    starts in ``Answer.text``, in characters. The pieces in order are exactly the Answer's text."""

    query_id: str
    offset: int
    text: str


class DistillPair(Wire, tag="pair", kw_only=True):
    """One captured teacher/student pair on ``HS_DISTILL``; ``pair_id`` de-duplicates per fragment."""

    pair_id: str  # sha256(tenant, student, fragment hash)[:32]: JetStream's Nats-Msg-Id
    tenant: str
    covenant: str
    student: str
    query_id: str
    fragment_hash: str
    prompt: str
    context: list[Message] = []
    teacher_model: str
    teacher_pool: str
    teacher_text: str
    teacher_confidence: float | None = None
    teacher_cost_usd: float = 0.0
    student_model: str = ""
    student_pool: str = ""
    student_text: str | None = None  # None: the shadow strike failed (counted, never surfaced)
    student_cost_usd: float = 0.0
    agreement: float | None = None  # 0..1 by the covenant's measure
    agreed: bool | None = None
    captured_at: float = 0.0  # unix seconds


class DistillEvent(Wire, tag="distill_event", kw_only=True):
    """A distiller decision or step, on ``hs.events.distill.<student>.<action>`` and in the log."""

    student: str  # the student key: "<student>" or "<student>.<tenant>" when pairs stay per tenant
    action: str  # captured | trained | evaluated | start_canary | reject | promote | rollback | train_failed
    stage: str
    reason: str = ""
    figures: dict[str, float] = {}
    at: float = 0.0  # unix seconds


class ErrorReply(Wire, tag="error", kw_only=True):
    code: str
    message: str
    status: int = 500
    query_id: str = ""
    term: str | None = None
    tried: list[str] = []
    retryable: bool = False


AnswerStreamMsg = AnswerChunk | Answer | ErrorReply


# --- quotes without execution (Gateway.quote) and readiness --------------------------------------


class RankedBid(Term, kw_only=True):
    pool: str
    provider: str
    pool_class: str
    model: str
    price_usd: float
    predicted_start_ms: float
    predicted_total_ms: float
    tokens_per_s: float
    preemptible: bool = False
    score: float
    why: str


class RefusedBy(Term, kw_only=True):
    pool: str
    term: str  # the covenant term the pool cannot meet
    detail: str


class FragmentQuote(Term, kw_only=True):
    fragment_id: str
    index: int
    step: str  # the fallback step that would serve it ("" when none would)
    negotiation: Literal["quotes", "cfp"]
    winner: RankedBid | None = None
    alternatives: list[RankedBid] = []  # the other admissible bids, best first
    refused: list[RefusedBy] = []  # pools that cannot meet the covenant, with the term
    steps_tried: list[str] = []  # earlier steps that offered no admissible bid


class QuoteReply(Wire, tag="quote_reply", kw_only=True):
    """What a query would cost and where it would run; nothing was executed or charged."""

    query_id: str
    tenant: str
    covenant: str
    covenant_id: str
    fragments: list[FragmentQuote]
    total_usd: float  # the winners' prices summed
    servable: bool  # every fragment has a winner now (a queue step may still serve the rest later)


class Readiness(Wire, tag="readiness", kw_only=True):
    ready: bool
    nats_connected: bool
    pools_quoting: list[str]
    reasons: list[str] = []  # why not ready


class BudgetStatus(Term, kw_only=True):
    """A tenant's shared budget now (every orchestrator's spend, from JetStream KV)."""

    tenant: str
    day: str  # UTC, "2025-06-01"
    month: str  # "2025-06"
    spent_day_usd: float
    spent_month_usd: float
    held_usd: float  # holds of strikes in flight
    daily_usd: float | None
    monthly_usd: float | None


class TenantUsage(Wire, tag="usage", kw_only=True):
    """What one tenant may see of the books: its own spend, never another tenant's."""

    tenant: str
    budget: BudgetStatus | None = None  # None: no daily/monthly budget is configured for the tenant
    process_spent_usd: float = 0.0  # settled through this orchestrator process since it started
    process_held_usd: float = 0.0


# --- codecs (built once) -------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_query = msgspec.json.Decoder(Query)
_strike = msgspec.json.Decoder(Strike)
_strike_result = msgspec.json.Decoder(StrikeResult)
_strike_reply = msgspec.json.Decoder(StrikeReply)
_answer_stream = msgspec.json.Decoder(AnswerStreamMsg)
_bid_reply = msgspec.json.Decoder(Bid | Refusal)
_agent_msg = msgspec.json.Decoder(
    CallForProposals | Award | Rejection | Reserve | FreeAllocation | MetricsAsk | CancelStrike)
_agent_reply = msgspec.json.Decoder(Lease | Allocated | Freed | MetricsReply | ErrorReply)
_verdicts = msgspec.json.Decoder(VerdictMsg)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_query(data: bytes) -> Query:
    return _query.decode(data)


def decode_strike(data: bytes) -> Strike:
    return _strike.decode(data)


def decode_strike_result(data: bytes) -> StrikeResult:
    result: StrikeResult = _strike_result.decode(data)
    return result


def decode_strike_reply(data: bytes) -> StrikeReply:
    """What a pool host sends on a strike's reply inbox: a chunk of a streamed strike, or the result."""
    reply: StrikeReply = _strike_reply.decode(data)
    return reply


def decode_answer_stream(data: bytes) -> AnswerStreamMsg:
    """A message on a streamed query's reply subject: a chunk, the Answer, or the ErrorReply."""
    msg: AnswerStreamMsg = _answer_stream.decode(data)
    return msg


def decode_verdicts(data: bytes) -> list[Verdict]:
    """A ``Verdict`` or a ``Verdicts`` message, as a list."""
    msg: VerdictMsg = _verdicts.decode(data)
    return msg.verdicts if isinstance(msg, Verdicts) else [msg]


def decode_bid_reply(data: bytes) -> Bid | Refusal:
    reply: Bid | Refusal = _bid_reply.decode(data)
    return reply


AgentMsg = CallForProposals | Award | Rejection | Reserve | FreeAllocation | MetricsAsk | CancelStrike
AgentReply = Lease | Allocated | Freed | MetricsReply | ErrorReply


def decode_agent_msg(data: bytes) -> AgentMsg:
    msg: AgentMsg = _agent_msg.decode(data)
    return msg


def decode_agent_reply(data: bytes) -> AgentReply:
    reply: AgentReply = _agent_reply.decode(data)
    return reply
