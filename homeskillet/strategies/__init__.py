"""Decomposition and serving strategies: cascade, ensemble, hedged strikes, map → reduce, and
the plan that chooses among them per covenant. The orchestrator strikes; these decide what."""

from .cascade import cascade, keep
from .confidence import agreement, from_logprob
from .ensemble import ensemble
from .hedge import Hedged, backup_for, hedge_delay_ms, hedged_execute
from .mapreduce import chunk_budget, map_reduce
from .serving import Plan, Result, plan, serve_plan
from .types import Run, Served

__all__ = [
    "Hedged",
    "Plan",
    "Result",
    "Run",
    "Served",
    "agreement",
    "backup_for",
    "cascade",
    "chunk_budget",
    "ensemble",
    "from_logprob",
    "hedge_delay_ms",
    "hedged_execute",
    "keep",
    "map_reduce",
    "plan",
    "serve_plan",
]
