"""The ledger (actor): budget holds before a strike, settlement after, cost per tenant/model/pool.

Settlement is keyed by ``strike_id``: a strike whose result is delivered twice is charged once.
A hold is taken only when a budget applies (a hold against no limit protects nothing, and would
put an actor hop on every query's hot path).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from .bounded import BoundedDict
from .errors import BudgetExceeded
from .supervisor import HsActor

__all__ = ["Hold", "LedgerActor", "LedgerReport", "LedgerState", "Release", "Report", "Settle"]


class Hold(msgspec.Struct, frozen=True):
    tenant: str
    strike_id: str
    amount_usd: float
    budget_usd: float


class Settle(msgspec.Struct, frozen=True):
    tenant: str
    strike_id: str
    model: str
    pool: str
    cost_usd: float


class Release(msgspec.Struct, frozen=True):
    strike_id: str


class Report(msgspec.Struct, frozen=True):
    tenant: str | None = None


class LedgerReport(msgspec.Struct):
    spent_usd: dict[str, float]
    held_usd: dict[str, float]
    by_pool: dict[str, float]
    by_model: dict[str, float]
    settlements: int
    duplicates_ignored: int


class LedgerState:
    def __init__(self, settled_max: int = 20_000) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.holds: dict[str, tuple[str, float]] = {}
        # Strike ids already charged, for idempotent settlement: a duplicate comes within seconds of
        # the first, so the most recent ``settled_max`` are enough ([retention] ledger_settled).
        self.settled: BoundedDict[str, float] = BoundedDict(settled_max, "ledger_settled")
        self.settlements = 0
        self.by_pool: dict[str, float] = defaultdict(float)
        self.by_model: dict[str, float] = defaultdict(float)
        self.duplicates = 0

    def held(self, tenant: str) -> float:
        return sum(a for t, a in self.holds.values() if t == tenant)


class LedgerActor(HsActor):
    name = "ledger"

    def handle(self, msg: Any) -> Any:
        s: LedgerState = self.state
        match msg:
            case Hold(tenant=tenant, strike_id=sid, amount_usd=amount, budget_usd=budget):
                committed = s.spent[tenant] + s.held(tenant)
                if committed + amount > budget + 1e-12:
                    raise BudgetExceeded(
                        f"tenant {tenant!r} budget ${budget:g} cannot cover ${amount:.6f} "
                        f"(spent ${s.spent[tenant]:.6f}, held ${s.held(tenant):.6f})",
                        term="cost.tenant_budget_usd",
                    )
                s.holds[sid] = (tenant, amount)
                return True
            case Settle(tenant=tenant, strike_id=sid, model=model, pool=pool, cost_usd=cost):
                s.holds.pop(sid, None)
                if sid in s.settled:
                    s.duplicates += 1
                    return False
                s.settled[sid] = cost
                s.settlements += 1
                s.spent[tenant] += cost
                s.by_pool[pool] += cost
                s.by_model[model] += cost
                return True
            case Release(strike_id=sid):
                s.holds.pop(sid, None)
                return True
            case Report(tenant=tenant):
                keep = (lambda t: t == tenant) if tenant else (lambda t: True)
                held: dict[str, float] = defaultdict(float)
                for t, a in s.holds.values():
                    held[t] += a
                return LedgerReport(
                    spent_usd={t: v for t, v in s.spent.items() if keep(t)},
                    held_usd={t: v for t, v in held.items() if keep(t)},
                    by_pool=dict(s.by_pool),
                    by_model=dict(s.by_model),
                    settlements=s.settlements,
                    duplicates_ignored=s.duplicates,
                )
        raise TypeError(f"ledger cannot handle {type(msg).__name__}")
