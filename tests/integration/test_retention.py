"""Every per-query structure a long-running process keeps is capped ([retention], cache_max_entries),
and each cap holds: counted entries, never timed. (The soak, bench/soak.py, shows RSS staying flat.)"""

from __future__ import annotations

import msgspec
import pytest

from homeskillet.bounded import retained
from homeskillet.config import RetentionSettings, TenantSettings
from homeskillet.errors import NotFound
from homeskillet.ledger import Report
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Query, ReserveRequest

CAPS = RetentionSettings(results=3, strike_results=2, strike_cancels=2, ledger_settled=4, reservations_ended=2)
N = 7  # queries: more than every cap


@pytest.fixture
async def rt(nats_url: str):  # type: ignore[no-untyped-def]
    pools = [echo_pool("echo/standard", usd_per_hour=0.8, gpu_model="L4")]
    # A tenant with limits: the shared KV state (budgets, rate limits) is on the path too.
    tenants = {"*": TenantSettings(daily_usd=100.0, requests_per_minute=10_000)}
    async with start_runtime(nats_url, pools, retention=CAPS, cache_max_entries=3, tenants=tenants) as runtime:
        yield runtime


async def test_each_cap_is_enforced(rt) -> None:  # type: ignore[no-untyped-def]
    gw = rt.gateway
    answers = []
    for i in range(N):
        answers.append(await gw.ask(Query(prompt=f"question number {i}", tenant=f"tenant-{i}", covenant="auto",
                                          max_tokens=8)))

    # Answers kept for GET /api/v1/results: the last 3; older ones are a clear NotFound.
    assert len(gw.results) == 3 and gw.results.evicted == N - 3
    assert gw.result(answers[-1].query_id, "tenant-6") == answers[-1]
    with pytest.raises(NotFound, match="last 3 queries"):
        gw.result(answers[0].query_id, "tenant-0")

    # Strike results kept per pool host for idempotency, and cancel requests.
    host = rt.hosts["echo/standard"]
    assert len(host.results) == 2 and host.results.evicted == N - 2
    for i in range(5):
        host.cancel(f"never-arrives-{i}")
    assert list(host.cancels) == ["never-arrives-3", "never-arrives-4"]

    # The ledger remembers the last 4 settled strike ids; its counts stay whole.
    report = await rt.ledger.call(Report())
    assert report.settlements == N and len(rt.ledger.state.settled) == 4
    assert len(report.spent_usd) == N  # per-tenant totals are kept (bounded by tenants, not queries)

    # The result cache (semantic, for `auto`): 3 entries.
    cache = rt.orchestrator.cache
    assert len(cache) == 3 and cache.evicted == N - 3
    assert sum(len(ix) for ix in cache._by_ns.values()) == 3  # the semantic index shrinks with it

    # Shared-state locks: one per key while in use, none left afterwards (7 tenants went through).
    assert rt.orchestrator.budgets.cell._locks == {} and gw.limits.cell._locks == {}

    # Everything is exported, summed over live instances (other tests' runtimes may be alive too).
    snap = retained()
    for name in ("results", "ledger_settled", "result_cache", "strike_results[echo/standard]",
                 "strike_cancels[echo/standard]", "reservations_ended"):
        entries, cap, _ = snap[name]
        assert entries <= cap, name


async def test_released_reservations_are_capped_active_ones_never(rt) -> None:  # type: ignore[no-untyped-def]
    gw = rt.gateway
    active = await gw.reserve(ReserveRequest(tenant="acme", duration_s=600))
    ended = []
    for _ in range(4):
        res = await gw.reserve(ReserveRequest(tenant="acme", duration_s=600))
        ended.append(await gw.release(res.reservation_id, "acme"))
    assert (await gw.reservation(active.reservation_id, "acme")).status == "active"  # never dropped
    assert [r.status for r in [await gw.reservation(e.reservation_id, "acme") for e in ended[-2:]]] == \
        ["released", "released"]
    for e in ended[:2]:
        with pytest.raises(NotFound):
            await gw.reservation(e.reservation_id, "acme")
    assert len(rt.reservations.table) == 3


def test_retention_is_read_from_the_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from homeskillet.config import load_settings
    from homeskillet.strict import StrictError

    cfg = tmp_path / "hs.toml"
    cfg.write_text("cache_max_entries = 50\n[retention]\nresults = 20\nstrike_results = 30\n")
    s = load_settings(cfg)
    assert (s.cache_max_entries, s.retention.results, s.retention.strike_results) == (50, 20, 30)
    assert s.retention.ledger_settled == RetentionSettings().ledger_settled
    cfg.write_text("[retention]\nresults = 0\n")
    with pytest.raises(StrictError, match="results"):
        load_settings(cfg)
    cfg.write_text("[retention]\nanswers = 5\n")
    with pytest.raises(StrictError, match="answers"):
        load_settings(cfg)
    assert msgspec.structs.asdict(RetentionSettings())  # every default is a positive count
