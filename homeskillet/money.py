"""USD amounts as we report them: rounded to the nano-dollar (1e-9 USD).

Costs are computed in binary floats (tokens × $/Mtok, seconds × $/h) and summed, which leaves noise
such as ``2.1000000000000002e-6``. Every amount an ingress reports (an answer's and its fragments'
cost, a quote's prices, a tenant's usage and budget, a reservation's bill, an allocation's accrued
cost) is rounded here, once, at the gateway. 1e-9 USD is a tenth of one token at $0.01 per million
tokens, finer than any price a provider quotes (per-token prices, $/h to the cent or mill), so
rounding never hides a charge. The ledger and budgets keep full precision; only what is reported is rounded.
"""

from __future__ import annotations

import msgspec

from .wire import AllocationMetrics, Answer, QuoteReply, Reservation, TenantUsage

__all__ = ["USD_DIGITS", "round_answer", "round_metrics", "round_quote", "round_reservation", "round_usage",
           "round_usd"]

USD_DIGITS = 9  # nano-dollars


def round_usd(amount: float) -> float:
    return round(amount, USD_DIGITS)


def round_answer(a: Answer) -> Answer:
    a.cost_usd = round_usd(a.cost_usd)
    for f in a.fragments:
        f.cost_usd = round_usd(f.cost_usd)
    return a


def round_quote(q: QuoteReply) -> QuoteReply:
    q.total_usd = round_usd(q.total_usd)
    for f in q.fragments:
        for bid in ([f.winner] if f.winner is not None else []) + f.alternatives:
            bid.price_usd = round_usd(bid.price_usd)
    return q


def round_usage(u: TenantUsage) -> TenantUsage:
    b = u.budget
    budget = None if b is None else msgspec.structs.replace(
        b, spent_day_usd=round_usd(b.spent_day_usd), spent_month_usd=round_usd(b.spent_month_usd),
        held_usd=round_usd(b.held_usd))
    return msgspec.structs.replace(u, budget=budget, process_spent_usd=round_usd(u.process_spent_usd),
                                   process_held_usd=round_usd(u.process_held_usd))


def round_reservation(r: Reservation) -> Reservation:
    if r.billed_usd is None:
        return r
    return msgspec.structs.replace(r, billed_usd=round_usd(r.billed_usd))




def round_metrics(m: AllocationMetrics) -> AllocationMetrics:
    return m if m.cost_usd is None else msgspec.structs.replace(m, cost_usd=round_usd(m.cost_usd))
