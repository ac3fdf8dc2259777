"""Logs and metrics: structlog for humans or JSON, Prometheus counters for machines.

structlog context does not cross into actor threads, so actor code binds ``query_id`` and
``strike_id`` from the message it is handling (``log.bind(...)``), never from contextvars.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTOR_RESTARTS",
    "CACHE_LOOKUPS",
    "CASCADE_STEPS",
    "DISTILL_AGREEMENT",
    "DISTILL_PAIRS",
    "DISTILL_SERVED",
    "DISTILL_SHADOWS",
    "FALLBACKS",
    "HEDGES",
    "POOL_LOSS_USD",
    "QUERIES",
    "QUERY_SECONDS",
    "STRIKES",
    "TTFT_SECONDS",
    "configure_logging",
    "get_logger",
    "labelled",
]

ACTOR_RESTARTS = Counter("hs_actor_restarts_total", "Actors restarted by their supervisor", ["actor"])
STRIKES = Counter("hs_strikes_total", "Strikes by pool and outcome", ["pool", "outcome"])
FALLBACKS = Counter("hs_fallbacks_total", "Fragments moved past a fallback step", ["step", "reason"])
CACHE_LOOKUPS = Counter("hs_cache_lookups_total", "Result cache lookups by mode and result (exact, semantic, miss)",
                        ["mode", "result"])
CASCADE_STEPS = Counter("hs_cascade_total", "Cascade tiers struck, by outcome (kept, escalated)", ["tier", "outcome"])
HEDGES = Counter("hs_hedges_total", "Hedged strikes by outcome (fired, primary_won, hedge_won)", ["outcome"])
POOL_LOSS_USD = Counter("hs_pool_loss_usd_total", "What providers billed above a strike's hold (the charge is "
                        "capped at the hold; the excess is the pool's loss, not the tenant's)", ["pool"])
QUERIES = Counter("hs_queries_total", "Queries by outcome", ["outcome"])
QUERY_SECONDS = Histogram("hs_query_seconds", "End-to-end query latency")
TTFT_SECONDS = Histogram("hs_time_to_first_token_seconds",
                         "Streamed queries: from accepting the query to sending its first text",
                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0))
# Distillation (homeskillet/distill/): the loop's volume, its money and the student's agreement.
DISTILL_SHADOWS = Counter("hs_distill_shadow_total", "Shadow strikes by side (student, teacher) and result",
                          ["student", "side", "result"])
DISTILL_PAIRS = Counter("hs_distill_pairs_total", "Teacher/student pairs captured", ["student"])
DISTILL_SERVED = Counter("hs_distill_served_total", "Family fragments by the tier that answered (teacher, student)",
                         ["student", "tier"])
DISTILL_AGREEMENT = Gauge("hs_distill_agreement", "Student agreement with the teacher: live window and held-out",
                          ["student", "window"])


MAX_LABEL_SETS = 500  # children per metric made through labelled(); label sets past it count as "other"
_children: dict[tuple[Any, tuple[tuple[str, Any], ...]], Any] = {}
_made: dict[int, int] = {}  # id(metric) -> children made through labelled()


def labelled(metric: Any, **labels: Any) -> Any:
    """``metric.labels(**labels)``, looked up once per label set: ``labels()`` takes a lock and
    validates on every call, a few µs on the query path. (Never ``remove`` a cached child.)
    Bounded: a label value can come from a request (a covenant override naming ``pool:<any>``
    as a fallback step), and each new one would be a child kept for the life of the process, so
    past ``MAX_LABEL_SETS`` children of one metric, new label sets are counted under "other"."""
    key = (metric, tuple(sorted(labels.items())))
    child = _children.get(key)
    if child is None:
        if _made.get(id(metric), 0) >= MAX_LABEL_SETS:
            key = (metric, tuple((k, "other") for k, _ in key[1]))
            child = _children.get(key)
            if child is None:  # the one "other" child, made once and not counted
                child = _children[key] = metric.labels(**dict.fromkeys(labels, "other"))
            return child
        child = _children[key] = metric.labels(**labels)
        _made[id(metric)] = _made.get(id(metric), 0) + 1
    return child


def configure_logging(*, json: bool = False, level: str = "INFO") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    logging.getLogger("pykka").setLevel(logging.CRITICAL)  # the supervisor reports crashes itself
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer] if json else [*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Resolving a module logger's configuration on every call showed up on the query path;
        # configure_logging runs once, before anything logs, so caching is safe.
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
