"""Contract Net leases: every path a lease can take ends with it released, and a lease whose
strike never comes expires and is swept before the pool counts its capacity. The pool has room
for two leases, so one leaked lease on each path would be enough to make it refuse awards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import nats
import pytest

from homeskillet.analyze import analyze
from homeskillet.config import TenantSettings
from homeskillet.covenant import Step
from homeskillet.errors import BudgetExceeded
from homeskillet.pools import CurrentQuote
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import CancelStrike, Query, Strike, StrikeCancelled, StrikeFailure, decode_strike_result, encode

POOL = "echo/standard"
CFP = {"negotiation": "cfp"}


def leases(rt: Runtime) -> int:
    return len(rt.hosts[POOL].agent.state.leases)


async def settled(rt: Runtime) -> int:
    """The lease count once the agent has handled everything told to it before now."""
    await rt.hosts[POOL].agent.call(CurrentQuote(ttl_ms=1))
    return leases(rt)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def awarded(rt: Runtime, deadline_ms: int = 0) -> Strike:
    """A strike under a fresh Contract Net award, not yet sent: the pool holds its lease."""
    query = Query(query_id=uuid.uuid4().hex, prompt="lease me", model="gemma-2b", overrides=CFP)
    cov = rt.orchestrator.covenants.resolve(query)
    frag = analyze(query, cov)[0]
    ranked, _, cfp_id = await rt.negotiator.contract_net(Step("any"), cov, frag, set(), False)
    sid = uuid.uuid4().hex
    lease = await rt.negotiator.award(cfp_id, ranked[0], ranked[1:], query.query_id, sid)
    return Strike(strike_id=sid, query_id=query.query_id, tenant="t", covenant_id=cov.covenant_id, pool=POOL,
                  fragment=frag, model=frag.model, lease_id=lease.lease_id, max_price_usd=1.0,
                  deadline_ms=deadline_ms or int(time.time() * 1000) + 10_000)


async def send(rt: Runtime, strike: Strike) -> object:
    nc = await nats.connect(rt.nats_urls[0])
    try:
        reply = await nc.request(rt.subjects.strike(POOL), encode(strike), timeout=5)
    finally:
        await nc.close()
    return decode_strike_result(reply.data)


@pytest.mark.parametrize("budget", ["shared", "covenant"])
async def test_a_budget_refusal_after_the_award_releases_the_lease(nats_url: str, budget: str) -> None:
    over = dict(CFP)
    tenants = {}
    if budget == "shared":
        tenants = {"poor": TenantSettings(daily_usd=1e-12)}
    else:
        over["cost"] = {"tenant_budget_usd": 1e-12}
    async with start_runtime(nats_url, [echo_pool(capacity=2, queue_limit=0)], tenants=tenants) as rt:
        for _ in range(3):  # one leaked lease per refusal would leave the third award nowhere to go
            with pytest.raises(BudgetExceeded):
                await rt.ask(tenant="poor", prompt="too dear", model="gemma-2b", overrides=over)
            await eventually(lambda: leases(rt) == 0)
        answer = await rt.ask(tenant="rich", prompt="still served", model="gemma-2b", overrides=CFP)
        assert answer.fragments[0].pool == POOL and await settled(rt) == 0


async def test_a_strike_that_arrives_late_releases_its_lease(nats_url: str) -> None:
    async with start_runtime(nats_url, [echo_pool(capacity=2, queue_limit=0)]) as rt:
        strike = await awarded(rt, deadline_ms=int(time.time() * 1000) - 1)
        assert leases(rt) == 1
        result = await send(rt, strike)
        assert isinstance(result, StrikeFailure) and result.code == "deadline_exceeded"
        assert await settled(rt) == 0


async def test_a_cancelled_strike_releases_its_lease(nats_url: str) -> None:
    async with start_runtime(nats_url, [echo_pool(capacity=2, queue_limit=0)]) as rt:
        # Cancelled before it arrived (a lost hedge): it answers StrikeCancelled and frees the lease.
        strike = await awarded(rt)
        rt.hosts[POOL].cancel(strike.strike_id)
        result = await send(rt, strike)
        assert isinstance(result, StrikeCancelled) and result.billed_usd == 0.0
        assert await settled(rt) == 0
        # Cancelled by the orchestrator and never sent at all: the cancel alone frees it.
        strike = await awarded(rt)
        await rt.nc.publish(rt.subjects.agent(POOL), encode(CancelStrike(strike_id=strike.strike_id, pool=POOL,
                                                                         reason="not sent")))
        await eventually(lambda: leases(rt) == 0)


async def test_a_finished_strike_releases_its_lease(nats_url: str) -> None:
    async with start_runtime(nats_url, [echo_pool(capacity=2, queue_limit=0)]) as rt:
        for _ in range(3):
            answer = await rt.ask(prompt="served under an award", model="gemma-2b", overrides=CFP)
            assert "won a Contract Net round" in answer.fragments[0].why or answer.fragments[0].pool == POOL
        assert await settled(rt) == 0
