"""Tenant budgets and rate limits under concurrency, on one and on two orchestrators sharing one
nats-server (JetStream KV). Real HTTP, real NATS, echo pools priced so one query costs a known
amount: input tokens only, so the hold (the bid) and the settled cost are the same."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest

from homeskillet.budgets import Budgets
from homeskillet.config import HttpSettings, Settings, TenantSettings
from homeskillet.errors import BudgetExceeded
from homeskillet.kvstate import KvCell, bucket_name, open_bucket
from homeskillet.runtime import Runtime
from homeskillet.sims.base import count_tokens
from homeskillet.testing import echo_pool

PROMPT = "charge me exactly this"
PRICE = count_tokens(PROMPT) * 1.0 / 1e6  # usd_per_mtok_in = 1.0, nothing else priced
BUDGET = 10.5 * PRICE  # fits 10 queries, not 11
HTTP = HttpSettings(listen="127.0.0.1:0")


def settings(prefix: str, nats_url: str, **tenants: TenantSettings) -> Settings:
    pool = echo_pool(usd_per_mtok_in=1.0, usd_per_mtok_out=0.0, capacity=64, options={"delay_ms": 5.0})
    return Settings(nats=[nats_url], prefix=prefix, pools=[pool], http=HTTP, tenants=dict(tenants))


async def fire(urls: list[str], n: int, tenant: str) -> Counter[int]:
    async with httpx.AsyncClient(timeout=30) as h:
        async def one(i: int) -> httpx.Response:
            return await h.post(urls[i % len(urls)] + "/api/v1/query", json={"prompt": PROMPT, "model": "gemma-2b"},
                                headers={"X-Tenant": tenant})
        replies = await asyncio.gather(*(one(i) for i in range(n)))
    for r in replies:
        assert r.status_code in (200, 402), r.text
        if r.status_code == 402:
            assert r.json()["code"] == "budget_exceeded" and "daily budget" in r.json()["message"]
    return Counter(r.status_code for r in replies)


async def check_books(rt: Runtime, tenant: str, answered: int) -> None:
    assert rt.gateway is not None
    usage = await rt.gateway.usage(tenant)
    assert usage.budget is not None
    assert usage.budget.held_usd == 0.0  # every hold settled or released
    assert usage.budget.spent_day_usd == pytest.approx(answered * PRICE)
    assert usage.budget.spent_day_usd <= BUDGET  # never below zero left
    assert BUDGET - usage.budget.spent_day_usd >= 0


async def test_fifty_concurrent_against_a_budget_for_ten(nats_url: str) -> None:
    s = settings(f"t{uuid.uuid4().hex[:10]}", nats_url, acme=TenantSettings(daily_usd=BUDGET))
    async with Runtime(s) as rt:
        assert rt.http is not None
        counts = await fire([rt.http.url], 50, "acme")
        assert counts[200] == 10 and counts[402] == 40
        await check_books(rt, "acme", 10)
        report = await rt.ledger_report("acme")
        assert report.spent_usd["acme"] == pytest.approx(10 * PRICE)  # the process ledger agrees
        # Another tenant is not affected by acme's spend.
        assert (await fire([rt.http.url], 2, "other"))[200] == 2


async def test_two_orchestrators_share_one_budget(nats_url: str) -> None:
    s = settings(f"t{uuid.uuid4().hex[:10]}", nats_url, **{"*": TenantSettings(daily_usd=BUDGET, monthly_usd=1.0)})
    async with Runtime(s) as a, Runtime(s) as b:
        assert a.http is not None and b.http is not None
        counts = await fire([a.http.url, b.http.url], 50, "shared")
        assert counts[200] == 10 and counts[402] == 40
        await check_books(a, "shared", 10)
        # Both processes served some of the ten: the budget really was shared, not per process.
        spent = [(await rt.ledger_report("shared")).spent_usd.get("shared", 0.0) for rt in (a, b)]
        assert sum(spent) == pytest.approx(10 * PRICE)


async def test_rate_limit_requests_per_minute_across_two_instances(nats_url: str) -> None:
    s = settings(f"t{uuid.uuid4().hex[:10]}", nats_url, capped=TenantSettings(requests_per_minute=7))
    async with Runtime(s) as a, Runtime(s) as b:
        assert a.http is not None and b.http is not None
        async with httpx.AsyncClient(timeout=30) as h:
            replies = await asyncio.gather(*(
                h.post((a.http.url, b.http.url)[i % 2] + "/api/v1/query", json={"prompt": "hi", "model": "gemma-2b"},
                       headers={"X-Tenant": "capped"}) for i in range(20)))
    counts = Counter(r.status_code for r in replies)
    assert counts[200] == 7 and counts[429] == 13
    limited = next(r for r in replies if r.status_code == 429)
    assert limited.json()["code"] == "rate_limit_exceeded" and "retry-after" in limited.headers


async def test_hold_settle_release_and_expiry(nats_url: str) -> None:
    """Budgets as plain calls against a real KV bucket: settle is idempotent, release frees the
    hold, and an expired hold (a crashed instance) stops counting."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        name = bucket_name(f"t{uuid.uuid4().hex[:10]}", "ledger")
        now = [1_750_000_000.0]
        budgets = Budgets(KvCell(await open_bucket(nc.jetstream(), name), name),
                          {"t": TenantSettings(daily_usd=1.0)}, hold_ttl_s=10, clock=lambda: now[0])
        assert await budgets.hold("t", "h1", 0.6)
        with pytest.raises(BudgetExceeded) as err:
            await budgets.hold("t", "h2", 0.6)
        assert err.value.term == "tenants.daily_usd" and err.value.status == 402
        await budgets.settle("t", "h1", 0.5)
        await budgets.settle("t", "h1", 0.5)  # a retried settle charges once
        assert (await budgets.status("t")).spent_day_usd == pytest.approx(0.5)
        assert await budgets.hold("t", "h3", 0.5)
        await budgets.release("t", "h3")
        assert (await budgets.status("t")).held_usd == 0.0
        assert await budgets.hold("t", "h4", 0.5)  # never settled: its instance "crashed"
        now[0] += 11
        assert (await budgets.status("t")).held_usd == 0.0
        now[0] += 86_400  # the next UTC day starts from zero
        assert (await budgets.status("t")).spent_day_usd == 0.0
        assert not await budgets.hold("unlisted", "h5", 99.0)  # no budget: nothing held, nothing refused
    finally:
        await nc.close()


def test_tenant_settings_are_strict(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from homeskillet.config import load_settings
    from homeskillet.strict import StrictError

    monkeypatch.delenv("JWT_ENABLED", raising=False)
    good = tmp_path / "good.toml"
    good.write_text('[tenants.acme]\ndaily_usd = 5.0\nrequests_per_minute = 60\n[tenants."*"]\nmonthly_usd = 100.0\n'
                    '[auth]\nenabled = true\nsecret = "x"\naudience = "hs"\n[http]\nlisten = "127.0.0.1:8080"\n')
    s = load_settings(good)
    assert s.tenants["acme"] == TenantSettings(daily_usd=5.0, requests_per_minute=60)
    assert s.tenants["*"].monthly_usd == 100.0 and s.auth.enabled and s.http.listen == "127.0.0.1:8080"
    bad = tmp_path / "bad.toml"
    bad.write_text("[tenants.acme]\ndaily_usd = 5.0\nrequests_per_mintue = 60\n")
    with pytest.raises(StrictError, match=r"\[tenants.acme\].*unknown key 'requests_per_mintue'"):
        load_settings(bad)
    for value in ('"lots"', "-1.0"):
        bad.write_text(f"[tenants.acme]\ndaily_usd = {value}\n")
        with pytest.raises(StrictError, match=r"tenants\.acme"):
            load_settings(bad)


# --- every price model: the hold covers the worst the strike can cost, the charge never exceeds it ---

RACE_BUDGET = 0.032
HOURLY = 0.384  # the 30 s hard deadline holds $0.0032: ten fit in the budget at once
SLOW = {"delay_ms": 200.0}  # 4 slots: the 200th strike would wait 10 s for one


async def race(rt: Runtime, n: int, tenant: str, **query: object) -> Counter[str]:
    from homeskillet.errors import HomeskilletError

    async def one(i: int) -> str:
        try:
            await rt.ask(tenant=tenant, prompt=f"race {i} " + PROMPT, model="gemma-2b", **query)
            return "answered"
        except BudgetExceeded:
            return "refused"
        except HomeskilletError as exc:
            return exc.code
    counts = Counter(await asyncio.gather(*(one(i) for i in range(n))))
    # Liveness, not speed: on a loaded machine some may run out of time, but none fails otherwise.
    assert set(counts) <= {"answered", "refused", "deadline_exceeded"}, counts
    assert counts["answered"] >= 1 and counts["refused"] >= 100, counts
    return counts


async def test_time_priced_race_never_overspends(nats_url: str) -> None:
    """200 at once on a pool priced by the hour, slow enough that strikes queue: the predicted
    price is far below what a strike costs once it waits for a slot (the code before charged
    several times the budget here). The hold is the hourly price for the time left to the hard
    deadline, so what is charged stays inside the budget, in the shared budget and in the process
    ledger alike. (How many are answered depends on the machine's load; that none overspends, not.)"""
    pool = echo_pool(usd_per_mtok_in=0.0, usd_per_mtok_out=0.0, usd_per_hour=HOURLY, capacity=4, options=SLOW)
    s = Settings(nats=[nats_url], prefix=f"t{uuid.uuid4().hex[:10]}", pools=[pool],
                 tenants={"hourly": TenantSettings(daily_usd=RACE_BUDGET)})
    async with Runtime(s) as rt:
        counts = await race(rt, 200, "hourly")
        assert rt.gateway is not None
        status = (await rt.gateway.usage("hourly")).budget
        assert status is not None and status.held_usd == 0.0
        assert status.spent_day_usd <= RACE_BUDGET, (status.spent_day_usd, counts)  # overspend <= 0
        report = await rt.ledger_report("hourly")
        assert report.spent_usd["hourly"] == pytest.approx(status.spent_day_usd, abs=2e-9)  # usage reports nano-dollars


async def test_time_priced_race_against_a_covenant_budget(nats_url: str) -> None:
    """The same race against the covenant's own ``cost.tenant_budget_usd`` (the ledger actor)."""
    pool = echo_pool(usd_per_mtok_in=0.0, usd_per_mtok_out=0.0, usd_per_hour=HOURLY, capacity=4, options=SLOW)
    s = Settings(nats=[nats_url], prefix=f"t{uuid.uuid4().hex[:10]}", pools=[pool])
    async with Runtime(s) as rt:
        counts = await race(rt, 200, "cov", overrides={"cost": {"tenant_budget_usd": RACE_BUDGET}})
        report = await rt.ledger_report("cov")
        assert report.spent_usd["cov"] <= RACE_BUDGET, (report.spent_usd, counts)
        assert not report.held_usd.get("cov"), report


async def test_token_priced_race_never_overspends(nats_url: str) -> None:
    """200 at once on a pool priced per token in and out: the hold is the prompt and all of
    max_tokens at the pool's prices; the answer is shorter, so each charge is below its hold."""
    pool = echo_pool(usd_per_mtok_in=1.0, usd_per_mtok_out=2.0, capacity=8, options={"delay_ms": 5.0})
    hold = (count_tokens("race 100 " + PROMPT) * 1.0 + 32 * 2.0) / 1e6
    budget = 10.5 * hold
    s = Settings(nats=[nats_url], prefix=f"t{uuid.uuid4().hex[:10]}", pools=[pool],
                 tenants={"tokens": TenantSettings(daily_usd=budget)})
    async with Runtime(s) as rt:
        counts = await race(rt, 200, "tokens", max_tokens=32)
        assert rt.gateway is not None
        status = (await rt.gateway.usage("tokens")).budget
        assert status is not None and status.held_usd == 0.0
        assert status.spent_day_usd <= budget, (status.spent_day_usd, counts)
