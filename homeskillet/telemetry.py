"""Logs and metrics: structlog for humans or JSON, Prometheus counters for machines.

structlog context does not cross into actor threads, so actor code binds ``query_id`` and
``strike_id`` from the message it is handling (``log.bind(...)``), never from contextvars.
"""

from __future__ import annotations

import functools
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


@functools.cache
def labelled(metric: Any, **labels: str) -> Any:
    """``metric.labels(**labels)``, looked up once per label set: ``labels()`` takes a lock and
    validates on every call, a few µs on the query path. (Never ``remove`` a cached child.)"""
    return metric.labels(**labels)


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
