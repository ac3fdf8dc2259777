"""hosted.ai connector against its simulator over real HTTP: the token flow, allocations, and each
failure mode of provider-apis §8/§9 mapped to our errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest

from homeskillet.errors import HomeskilletError, NoCapacity, Preempted, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest, connector_class
from homeskillet.providers.hostedai import HostedAIConnector
from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.hostedai import HostedAISim, create_app
from homeskillet.testing import serve_asgi

MODEL = "gemma-2b-it"


class Clock:
    """A clock the test moves instead of sleeping (the simulator's epoch, or our monotonic)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def sim(config: SimConfig | None = None, clock: Callable[[], float] | None = None) -> Iterator[tuple[HostedAISim, str]]:
    app = create_app(config or SimConfig(seed=1, time_scale=0), clock=clock)
    with serve_asgi(app, "/ready") as url:  # an unknown path: a 404 that draws no fault
        yield app.state.sim, url


def connect(url: str, **options: Any) -> HostedAIConnector:
    return HostedAIConnector(base_url=url, api_key="sim-key", **{"pool_id": "standard-us-east", **options})


def strike(n: int = 0, **kw: Any) -> InferRequest:
    return InferRequest(strike_id=f"s-{n}", model=MODEL, prompt=f"question {n}", max_tokens=16, **kw)


def live(s: HostedAISim) -> int:
    return sum(1 for lease in s.leases.values() if lease.view.status == "active")


def test_registered_under_its_provider_name() -> None:
    assert connector_class("hostedai") is HostedAIConnector


async def test_many_strikes_reuse_one_token_and_one_allocation() -> None:
    with sim() as (s, url):
        conn = connect(url)
        try:
            results = await asyncio.gather(*(conn.infer(strike(i)) for i in range(20)))
            results += [await conn.infer(strike(100 + i)) for i in range(5)]
        finally:
            await conn.close()
        assert all(r.text and r.completion_tokens > 0 for r in results)
        assert s.counters["tokens_issued"] == 1
        assert s.counters["allocations_created"] == 1  # the standing allocation, made once for all
        assert s.counters["inferences"] == 25
        assert live(s) == 0  # close() released it


async def test_expired_token_is_refreshed_transparently() -> None:
    epoch = Clock(1_800_000_000.0)
    with sim(SimConfig(time_scale=0, extra={"token_ttl_s": 60}), clock=epoch) as (s, url):
        conn = connect(url)
        try:
            await conn.infer(strike(1))
            epoch.advance(61)  # the provider's clock says the token has expired; ours does not
            res = await conn.infer(strike(2))
        finally:
            await conn.close()
        assert res.text
        assert s.counters["tokens_issued"] == 2


async def test_token_is_renewed_before_expiry_on_our_clock() -> None:
    ours = Clock(1000.0)
    with sim(SimConfig(time_scale=0, extra={"token_ttl_s": 60})) as (s, url):
        conn = connect(url, clock=ours)
        try:
            await conn.infer(strike(1))
            before = s.counters["requests"]
            ours.advance(55)  # inside the renewal margin: fetch a new token first, no 401 round trip
            await conn.infer(strike(2))
            assert s.counters["requests"] - before == 2  # token + inference
            assert s.counters["tokens_issued"] == 2
        finally:
            await conn.close()


async def test_allocation_carries_requirements_and_metadata() -> None:
    with sim() as (s, url):
        conn = connect(url)
        want = AllocationRequest(min_vram_mb=2048, max_vram_mb=4096, min_tflops=5.0, duration_s=300, tenant="acme",
                                 workload="w-7")
        try:
            alloc = await conn.allocate(want)
            view = s.leases[alloc.allocation_id].view
            assert view.metadata.tenant_id == "acme" and view.metadata.workload_id == "w-7"
            assert view.vram_mb == 4096 and view.pool_id == "standard-us-east" and not view.preemptible
            assert alloc.usd_per_hour == 0.80 and alloc.detail["pool_id"] == "standard-us-east"
            assert 299 <= alloc.expires_at - alloc.created_at <= 301  # counted on our clock
            await conn.infer(strike(1, allocation=alloc))
            m = await conn.metrics(alloc)
            assert m.inference_count == 1 and m.status == "running" and m.memory_used_mb
            rel = await conn.release(alloc)
            assert rel.billed_usd == pytest.approx(view.billed_usd) and rel.detail["status"] == "released"
            again = await conn.release(alloc)  # releasing twice is harmless
            assert again.billed_usd is None
        finally:
            await conn.close()


async def test_request_no_pool_can_meet_changes_nothing() -> None:
    with sim() as (s, url):
        conn = connect(url)
        try:
            with pytest.raises(NoCapacity, match="min_vram_mb 100000"):
                await conn.allocate(AllocationRequest(min_vram_mb=100_000))
            with pytest.raises(NoCapacity, match="only preemptible"):
                await conn.allocate(AllocationRequest(offer_id="preemptible-us-east"))
            assert s.counters["allocations_created"] == 0
            assert await conn.quote(AllocationRequest(min_vram_mb=100_000)) == []
        finally:
            await conn.close()


async def test_quote_is_cheap_enough_to_poll() -> None:
    with sim() as (s, url):
        conn = connect(url, pool_id="", quote_ttl_s=60)
        try:
            offers = await asyncio.gather(*(conn.quote(AllocationRequest()) for _ in range(50)))
            assert s.counters["requests"] == 2  # one token, one pool listing, shared by 50 quotes
            by_id = {o.offer_id: o for o in offers[0]}
            assert set(by_id) == {"standard-us-east", "premium-us-east", "dedicated-us-east"}  # not preemptible
            assert by_id["premium-us-east"].usd_per_hour == 2.40 and by_id["premium-us-east"].vram_mb == 49_152
            pre = await conn.quote(AllocationRequest(preemptible=True))
            assert any(o.offer_id == "preemptible-us-east" and o.preemptible for o in pre)
            alloc = await conn.allocate(AllocationRequest(min_vram_mb=40_000))  # cheapest that fits: premium
            assert alloc.detail["pool_id"] == "premium-us-east"
            await conn.release(alloc)
        finally:
            await conn.close()


async def test_refusal_is_no_capacity() -> None:
    with sim(SimConfig(time_scale=0, faults=FaultPlan(refuse_rate=1.0))) as (s, url):
        conn = connect(url)
        try:
            with pytest.raises(NoCapacity, match="insufficient_capacity") as info:
                await conn.infer(strike())
            assert info.value.retryable
            assert live(s) == 0
        finally:
            await conn.close()


async def test_rate_limit_honours_retry_after() -> None:
    ours = Clock(1000.0)
    with sim(SimConfig(time_scale=0, faults=FaultPlan(rate_limit_rate=1.0))) as (s, url):
        conn = connect(url, clock=ours)
        try:
            with pytest.raises(RateLimited) as info:
                await conn.infer(strike(1))
            assert info.value.retry_after_s == 1.0 and info.value.retryable
            sent = s.counters["requests"]
            with pytest.raises(RateLimited) as again:  # inside the window: nothing is sent
                await conn.infer(strike(2))
            assert 0 < (again.value.retry_after_s or 0) <= 1.0
            assert s.counters["requests"] == sent
            ours.advance(1.01)
            with pytest.raises(RateLimited):  # the window is over: the provider is asked again
                await conn.infer(strike(3))
            assert s.counters["requests"] == sent + 1
        finally:
            await conn.close()


async def test_quote_reports_nothing_available_while_rate_limited() -> None:
    ours = Clock(1000.0)
    with sim() as (s, url):
        conn = connect(url, clock=ours, quote_ttl_s=0)
        try:
            assert (await conn.quote(AllocationRequest()))[0].available == 8
            s.config.faults.rate_limit_rate = 1.0
            with pytest.raises(RateLimited):
                await conn.quote(AllocationRequest())
            assert (await conn.quote(AllocationRequest()))[0].available == 0  # no request sent
        finally:
            s.config.faults.rate_limit_rate = 0.0
            await conn.close()


async def test_outage_is_a_retryable_provider_error() -> None:
    with sim(SimConfig(time_scale=0, faults=FaultPlan(outage=True))) as (_, url):
        conn = connect(url)
        try:
            with pytest.raises(ProviderError) as info:
                await conn.infer(strike())
            assert type(info.value) is ProviderError and info.value.retryable and info.value.http_status == 503
            health = await conn.health()
            assert not health.ok and "service_unavailable" in health.detail
        finally:
            await conn.close()


async def test_timeout_is_retryable_within_our_timeout() -> None:
    faults = FaultPlan(timeout_rate=1.0, timeout_s=2.0)  # the provider hangs for 2 s
    with sim(SimConfig(time_scale=1, faults=faults)) as (_, url):
        conn = connect(url, timeout_s=0.3)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"no answer within 0\.3s") as info:
                await conn.infer(strike())
            assert time.monotonic() - t0 < 1.5 and info.value.retryable
        finally:
            await conn.close()
    with sim(SimConfig(time_scale=0, faults=faults)) as (_, url):  # the gateway gives up first: 504
        conn = connect(url)
        try:
            with pytest.raises(ProviderError, match="gateway_timeout") as info:
                await conn.infer(strike())
            assert info.value.retryable and info.value.http_status == 504
        finally:
            await conn.close()


async def test_preemption_mid_inference_is_billed_and_the_pool_reallocates() -> None:
    config = SimConfig(seed=5, time_scale=0.001, faults=FaultPlan(preempt_rate=0.5))
    with sim(config) as (s, url):
        conn = connect(url, pool_id="preemptible-us-east")
        outcomes: list[str] = []
        try:
            for i in range(12):
                try:
                    await conn.infer(strike(i))
                    outcomes.append("ok")
                except Preempted as exc:
                    outcomes.append("preempted")
                    # hosted.ai bills started seconds at the pool's price: this inference ran < 1 s
                    assert exc.billed_usd == pytest.approx(0.25 / 3600) and exc.retryable
        finally:
            await conn.close()
        assert "ok" in outcomes and "preempted" in outcomes
        evicted = outcomes.count("preempted")
        assert s.counters["allocations_preempted"] == evicted
        assert s.counters["allocations_created"] == evicted + 1  # a fresh allocation after each eviction
        assert all(lease.view.preemptible for lease in s.leases.values())
        assert live(s) == 0


async def test_standard_pool_never_consents_to_eviction() -> None:
    with sim(SimConfig(time_scale=0, faults=FaultPlan(preempt_rate=1.0))) as (s, url):
        conn = connect(url)
        try:
            for i in range(3):
                await conn.infer(strike(i))
        finally:
            await conn.close()
        assert s.counters["allocations_preempted"] == 0


async def test_preemption_on_an_explicit_allocation() -> None:
    with sim(SimConfig(time_scale=0, faults=FaultPlan(preempt_rate=1.0))) as (_, url):
        conn = connect(url, pool_id="preemptible-us-east")
        try:
            alloc = await conn.allocate(AllocationRequest(preemptible=True))
            with pytest.raises(Preempted) as info:
                await conn.infer(strike(allocation=alloc))
            assert info.value.billed_usd == pytest.approx(0.25 / 3600)
            rel = await conn.release(alloc)  # already ended at the provider: its final bill
            assert rel.detail["status"] == "preempted" and rel.billed_usd == pytest.approx(0.25 / 3600)
        finally:
            await conn.close()


async def test_slow_allocation_past_ready_timeout_is_released() -> None:
    config = SimConfig(time_scale=1, capacity=1, faults=FaultPlan(slow_ready_s=1.5))
    with sim(config) as (s, url):
        conn = connect(url)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"not ready within 0\.3s; released the half-made") as info:
                await conn.allocate(AllocationRequest(ready_timeout_s=0.3))
            assert time.monotonic() - t0 < 1.2 and info.value.retryable
            assert s.counters["allocations_created"] == 1 and live(s) == 0
            assert [lease.view.status for lease in s.leases.values()] == ["released"]
        finally:
            await conn.close()


async def test_expired_standing_allocation_is_replaced() -> None:
    epoch = Clock(1_800_000_000.0)
    with sim(SimConfig(time_scale=0), clock=epoch) as (s, url):
        conn = connect(url, duration_s=600)
        try:
            await conn.infer(strike(1))
            epoch.advance(601)  # the provider expires it (and the token) on its own clock
            res = await conn.infer(strike(2))
        finally:
            await conn.close()
        assert res.text
        assert s.counters["allocations_expired"] == 1 and s.counters["allocations_created"] == 2
        assert live(s) == 0


async def test_metrics_and_release_bill_by_the_second() -> None:
    epoch = Clock(1_800_000_000.0)
    with sim(SimConfig(time_scale=0), clock=epoch) as (_, url):
        conn = connect(url)
        try:
            alloc = await conn.allocate(AllocationRequest(tenant="acme"))
            for i in range(3):
                await conn.infer(strike(i, allocation=alloc))
            epoch.advance(90)
            m = await conn.metrics(alloc)
            assert m.inference_count == 3 and 0 <= (m.gpu_utilization or 0) <= 1
            assert m.average_latency_ms and m.average_latency_ms > 0
            rel = await conn.release(alloc)
            assert rel.billed_usd == pytest.approx(90 * 0.80 / 3600)
        finally:
            await conn.close()


async def test_bad_key_is_auth_error_and_unknown_pool_is_not_retryable() -> None:
    with sim() as (_, url):
        conn = HostedAIConnector(base_url=url, api_key="wrong-key-123", pool_id="standard-us-east")
        try:
            with pytest.raises(ProviderAuthError) as auth:
                await conn.quote(AllocationRequest())
            assert "wrong-key-123" not in str(auth.value)
        finally:
            await conn.close()
        conn = connect(url, pool_id="nope-us-east")
        try:
            with pytest.raises(ProviderError, match="pool_id") as info:
                await conn.infer(strike())
            assert not info.value.retryable
        finally:
            await conn.close()


@pytest.mark.parametrize(
    ("options", "named"),
    [({"duration_s": 5}, "duration_s"), ({"pool": "x"}, "pool"), ({"timeout_s": 0}, "timeout_s"),
     ({"min_vram_mb": 4096, "max_vram_mb": 1024}, "max_vram_mb")],
)
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(HomeskilletError, match=named):
        HostedAIConnector(base_url="http://127.0.0.1:9", api_key="k", **options)


def test_missing_key_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOSTEDAI_API_KEY", raising=False)
    with pytest.raises(HomeskilletError, match=r"\$HOSTEDAI_API_KEY"):
        HostedAIConnector(base_url="http://127.0.0.1:9")


async def test_example_pools_make_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("HOSTEDAI_API_KEY", "sim-key")
    settings = load_settings(Path(__file__).parents[2] / "examples" / "pools-hostedai.toml")
    assert {p.pool_class for p in settings.pools} == {"standard", "premium", "preemptible", "dedicated"}
    with sim() as (_, url):
        for spec in settings.pools:
            conn = make_connector(msgspec.structs.replace(spec, options={**spec.options, "base_url": url}))
            try:
                assert isinstance(conn, HostedAIConnector)
                offers = await conn.quote(AllocationRequest(preemptible=spec.preemptible))
                assert [o.offer_id for o in offers] == [spec.options["pool_id"]]
                assert offers[0].usd_per_hour == spec.usd_per_hour and offers[0].vram_mb == spec.vram_mb
            finally:
                await conn.close()
