"""Per-tenant daily and monthly budgets, shared by every orchestrator on the NATS server.

One JetStream KV key per tenant (bucket ``hs-ledger``) holds the spend of the current UTC day and
month and the open holds. The strike path (``Orchestrator.execute``) takes a **hold** of the
awarded price before the strike, **settles** the real cost after, **releases** on failure; each
step is one compare-and-set (``kvstate.KvCell``), so concurrent requests on any number of
instances never commit more than the budget. A hold expires (``hold_ttl_s`` past the strike's
deadline) so a crashed instance cannot pin a budget forever; a retried settle charges once.

Only tenants with a ``daily_usd`` or ``monthly_usd`` in ``[tenants.<name>]`` (or ``[tenants."*"]``)
touch the store; the others skip it, keeping the hot path free of the round trips. The ledger
actor stays the per-process cost record (per tenant, pool, model) and still enforces a covenant's
own ``cost.tenant_budget_usd``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from .config import TenantSettings
from .errors import BudgetExceeded
from .kvstate import KvCell, bucket_name, key_token, open_bucket
from .wire import BudgetStatus

__all__ = ["BudgetRecord", "Budgets", "limits_for"]

_KEEP_SETTLED = 256  # recent settled hold ids kept for idempotency


class HoldRec(msgspec.Struct, array_like=True):
    amount_usd: float
    expires_ms: int


class BudgetRecord(msgspec.Struct, kw_only=True):
    day: str = ""  # "2025-06-01" (UTC)
    month: str = ""  # "2025-06"
    day_usd: float = 0.0
    month_usd: float = 0.0
    holds: dict[str, HoldRec] = {}
    settled: list[str] = []


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(BudgetRecord)


def limits_for(tenants: dict[str, TenantSettings], tenant: str) -> TenantSettings | None:
    """The tenant's own table, else the ``"*"`` table, else None (no limits)."""
    return tenants.get(tenant) or tenants.get("*")


def _periods(now_s: float) -> tuple[str, str]:
    d = datetime.fromtimestamp(now_s, UTC)
    return d.strftime("%Y-%m-%d"), d.strftime("%Y-%m")


def _current(raw: bytes | None, now_s: float) -> BudgetRecord:
    """The stored record rolled over to today's day and month, with expired holds dropped."""
    rec = _dec.decode(raw) if raw else BudgetRecord()
    day, month = _periods(now_s)
    if rec.day != day:
        rec.day, rec.day_usd = day, 0.0
    if rec.month != month:
        rec.month, rec.month_usd = month, 0.0
    now_ms = int(now_s * 1000)
    rec.holds = {k: h for k, h in rec.holds.items() if h.expires_ms > now_ms}
    return rec


class Budgets:
    def __init__(self, cell: KvCell, tenants: dict[str, TenantSettings], *, hold_ttl_s: float = 120.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.cell, self.tenants, self.hold_ttl_s, self.clock = cell, tenants, hold_ttl_s, clock

    @classmethod
    async def open(cls, js: JetStreamContext, prefix: str, tenants: dict[str, TenantSettings], *,
                   replicas: int = 0) -> Budgets:
        name = bucket_name(prefix, "ledger")
        return cls(KvCell(await open_bucket(js, name, replicas=replicas), name), tenants)

    def applies(self, tenant: str) -> bool:
        t = limits_for(self.tenants, tenant)
        return t is not None and (t.daily_usd is not None or t.monthly_usd is not None)

    async def hold(self, tenant: str, hold_id: str, amount_usd: float, *, ttl_s: float = 0.0) -> bool:
        """Reserve ``amount_usd`` or raise BudgetExceeded (nothing written). False: no budget applies."""
        limits = limits_for(self.tenants, tenant)
        if limits is None or (limits.daily_usd is None and limits.monthly_usd is None):
            return False
        now = self.clock()
        expires = int((now + (ttl_s or 0.0) + self.hold_ttl_s) * 1000)

        def change(raw: bytes | None) -> tuple[bytes | None, bool]:
            rec = _current(raw, now)
            if hold_id in rec.holds:  # our own write, which timed out but landed (kvstate retries)
                return None, True
            held = sum(h.amount_usd for h in rec.holds.values())
            for spent, cap, term, period in ((rec.day_usd, limits.daily_usd, "daily_usd", f"today ({rec.day})"),
                                             (rec.month_usd, limits.monthly_usd, "monthly_usd", f"in {rec.month}")):
                if cap is not None and spent + held + amount_usd > cap + 1e-12:
                    raise BudgetExceeded(
                        f"tenant {tenant!r}: the {term.split('_')[0]} budget ${cap:g} cannot cover ${amount_usd:.6f} "
                        f"(spent ${spent:.6f} {period}, held ${held:.6f} for strikes in flight); "
                        f"wait for the next period or raise [tenants.{tenant}] {term}",
                        term=f"tenants.{term}")
            rec.holds[hold_id] = HoldRec(amount_usd, expires)
            return _enc.encode(rec), True

        return await self.cell.cas(key_token(tenant), change)

    async def settle(self, tenant: str, hold_id: str, cost_usd: float) -> None:
        """Charge the real cost and drop the hold; a second settle of the same hold charges nothing."""
        if not self.applies(tenant):
            return
        now = self.clock()

        def change(raw: bytes | None) -> tuple[bytes | None, None]:
            rec = _current(raw, now)
            if hold_id in rec.settled:
                return None, None
            rec.holds.pop(hold_id, None)
            rec.day_usd += cost_usd
            rec.month_usd += cost_usd
            rec.settled = [*rec.settled[-(_KEEP_SETTLED - 1):], hold_id]
            return _enc.encode(rec), None

        await self.cell.cas(key_token(tenant), change)

    async def release(self, tenant: str, hold_id: str) -> None:
        if not self.applies(tenant):
            return
        now = self.clock()

        def change(raw: bytes | None) -> tuple[bytes | None, None]:
            rec = _current(raw, now)
            if rec.holds.pop(hold_id, None) is None:
                return None, None
            return _enc.encode(rec), None

        await self.cell.cas(key_token(tenant), change)

    async def status(self, tenant: str) -> BudgetStatus:
        """What the tenant has spent and holds now (read only)."""
        raw, _ = await self.cell.read(key_token(tenant))
        rec = _current(raw, self.clock())
        limits = limits_for(self.tenants, tenant) or TenantSettings()
        return BudgetStatus(tenant=tenant, day=rec.day, month=rec.month, spent_day_usd=rec.day_usd,
                            spent_month_usd=rec.month_usd, held_usd=sum(h.amount_usd for h in rec.holds.values()),
                            daily_usd=limits.daily_usd, monthly_usd=limits.monthly_usd)
