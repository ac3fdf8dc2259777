"""io.net connector against the io.net simulator over real HTTP: prepaid money, failure modes, quirks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from homeskillet.errors import HomeskilletError, NoCapacity, Preempted, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest
from homeskillet.providers.ionet import IonetConnector
from homeskillet.providers.ionet.api import billed_on_destroy, envelope_message, raise_ionet
from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.ionet import IonetSim, ManualClock, create_app
from homeskillet.testing import serve_asgi

MODEL = "mistral-7b"
RTX = 0.35  # the simulator's USD per RTX 4090 GPU-hour
FEES = 1.05 * 1.02  # io.net fee 5 %, then currency conversion 2 %


class TickClock(ManualClock):
    """Simulated time that moves ``step`` seconds each time the simulator reads it, so a slow start
    passes while the connector polls, without anyone sleeping."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def now(self) -> float:
        return self.advance(self.step)


@contextmanager
def simulator(clock: ManualClock | None = None, *, time_scale: float = 0,
              **extra: Any) -> Iterator[tuple[IonetSim, str]]:
    faults = FaultPlan(**extra.pop("faults", {}))
    extra.setdefault("ready_s", 0)
    app = create_app(SimConfig(seed=3, time_scale=time_scale, faults=faults, extra=extra),
                     clock=clock or (ManualClock() if time_scale == 0 else None))
    with serve_asgi(app, "/-/up") as url:  # any answer: a 404 works even during an outage
        yield app.state.sim, url


def connector(url: str, **over: Any) -> IonetConnector:
    options: dict[str, Any] = {"base_url": url, "api_key": "sim-key", "gpu_model": "RTX 4090", "poll_interval_s": 0.01,
                               "timeout_s": 2.0, "infer_timeout_s": 5.0, "ready_timeout_s": 5.0}
    return IonetConnector(**(options | over))


def want(**over: Any) -> AllocationRequest:
    fields: dict[str, Any] = {"model": MODEL, "gpu_model": "RTX 4090", "duration_s": 3600, "ready_timeout_s": 5.0}
    return AllocationRequest(**(fields | over))


def live(sim: IonetSim) -> int:
    return sum(1 for d in sim.deployments.values() if d.active)


async def test_quote_turns_the_prepaid_total_into_usd_per_hour() -> None:
    with simulator() as (_, url):
        conn = connector(url)
        try:
            offers = await conn.quote(want(duration_s=3 * 3600))
        finally:
            await conn.close()
    assert {o.region for o in offers} == {"US", "SG"}  # the RTX 4090's locations
    for o in offers:
        assert o.gpu_model == "NVIDIA RTX 4090" and o.count == 1 and o.vram_mb == 24 * 1024
        assert o.usd_per_hour == pytest.approx(RTX * FEES)  # total for 3 h, fees included, / 3
        assert o.available == 64 and not o.preemptible


async def test_quote_is_cheap_enough_to_poll() -> None:
    """After the first quote, a quote inside ``quote_ttl_s`` sends nothing; after it, one live read."""
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path.rsplit("/", 1)[-1])

    with simulator() as (_, url):
        client = httpx.AsyncClient(base_url=url, event_hooks={"request": [count]})
        conn = connector(url, client=client, quote_ttl_s=0.2)
        try:
            first = await conn.quote(want())
            assert sorted(sent) == ["available-replicas", "hardware", "price"]
            sent.clear()
            assert await conn.quote(want()) == first and sent == []
            await asyncio.sleep(0.25)  # let the availability TTL lapse
            await conn.quote(want())
            assert sent == ["available-replicas"]  # availability is live; catalogue and price stay cached
        finally:
            await conn.close()
            await client.aclose()


@pytest.mark.parametrize("faults", [{"refuse_rate": 1.0}, {"stale_offer_rate": 1.0}])
async def test_refused_or_stale_offer_is_no_capacity_and_costs_nothing(faults: dict[str, float]) -> None:
    with simulator(faults=faults) as (sim, url):
        conn = connector(url)
        try:
            offer = (await conn.quote(want()))[0]
            assert offer.available > 0  # the quote said yes; the rental finds it gone
            with pytest.raises(NoCapacity, match="Not enough available replicas"):
                await conn.allocate(want(offer_id=offer.offer_id))
        finally:
            await conn.close()
        assert sim.ledger == [] and sim.deployments == {}


async def test_no_hardware_under_the_ceiling_is_no_capacity_naming_the_price() -> None:
    with simulator() as (sim, url):
        conn = connector(url)
        try:
            with pytest.raises(NoCapacity, match=r"cheapest is \$0\.37/h, above the ceiling \$0\.10/h"):
                await conn.allocate(want(max_usd_per_hour=0.10))
        finally:
            await conn.close()
        assert sim.deployments == {}


async def test_rate_limit_is_rate_limited_with_retry_after() -> None:
    with simulator(faults={"rate_limit_rate": 1.0}) as (_, url):
        conn = connector(url)
        try:
            with pytest.raises(RateLimited) as info:
                await conn.quote(want())
        finally:
            await conn.close()
    assert info.value.retry_after_s == 1.0 and info.value.retryable


async def test_rate_limit_while_polling_is_waited_out() -> None:
    """A 429 on a status poll does not fail the allocation: the connector waits Retry-After and polls on."""
    with simulator(ready_s=60) as (sim, url):
        clock = sim.clock
        assert isinstance(clock, ManualClock)
        polls = 0

        async def throttle_first_poll(request: httpx.Request) -> None:
            nonlocal polls
            if request.method == "GET" and "/caas/deployment/" in request.url.path:
                polls += 1
                sim.config.faults.rate_limit_rate = 1.0 if polls == 1 else 0.0
                if polls == 2:
                    clock.advance(60)  # the container started while the connector waited

        client = httpx.AsyncClient(base_url=url, event_hooks={"request": [throttle_first_poll]})
        conn = connector(url, client=client)
        try:
            t0 = time.monotonic()
            alloc = await conn.allocate(want())
            assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured
            assert alloc.status == "running" and polls >= 2
        finally:
            await conn.close()
            await client.aclose()


@pytest.mark.parametrize("faults", [{"outage": True}, {"unavailable_rate": 1.0}])
async def test_outage_is_a_retryable_provider_error(faults: dict[str, Any]) -> None:
    with simulator(faults=faults) as (_, url):
        conn = connector(url)
        try:
            with pytest.raises(ProviderError) as info:
                await conn.quote(want())
            health = await conn.health()
        finally:
            await conn.close()
    assert type(info.value) is ProviderError and info.value.retryable and info.value.http_status == 503
    assert not health.ok and "503" in health.detail


async def test_a_hung_call_times_out_within_the_connector_timeout() -> None:
    with simulator(time_scale=1.0, faults={"timeout_rate": 1.0, "timeout_s": 2.0}) as (_, url):
        conn = connector(url, timeout_s=0.3)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"did not answer within 0.3s") as info:
                await conn.quote(want())
            assert time.monotonic() - t0 < 1.5 and info.value.retryable
        finally:
            await conn.close()


async def test_half_created_deployment_is_found_and_destroyed() -> None:
    """A deploy that answers 503 yet leaves a failed, paid deployment: the connector finds it by its
    name and destroys it, so io.net refunds everything but the first hour."""
    with simulator(faults={"half_created_rate": 1.0}) as (sim, url):
        conn = connector(url)
        try:
            with pytest.raises(ProviderError, match=r"half-created deployment .* was destroyed") as info:
                await conn.allocate(want(duration_s=3 * 3600))
        finally:
            await conn.close()
        assert info.value.retryable
        [dep] = sim.deployments.values()
        assert dep.phase == "destroyed"
        assert sim.spent_usd() == pytest.approx(RTX * 3 * FEES / 3)  # the first hour only
        assert f"${sim.spent_usd():.2f}" in str(info.value)


async def test_slow_start_is_polled_until_running() -> None:
    with simulator(TickClock(step=15.0), ready_s=120, faults={"slow_ready_s": 600}) as (sim, url):
        conn = connector(url)
        try:
            alloc = await conn.allocate(want())
            [dep] = sim.deployments.values()
            assert alloc.allocation_id == dep.id and dep.phase == "running"
            assert alloc.endpoint.endswith(f"/deployment/{dep.id}")
            assert alloc.detail["prepaid_usd"] == pytest.approx(RTX * FEES)
            res = await conn.infer(InferRequest(strike_id="s1", model=MODEL, prompt="hi", max_tokens=8,
                                                allocation=alloc))
            assert res.text and res.completion_tokens <= 8
            await conn.release(alloc)  # an allocation made by allocate() is the caller's to release
        finally:
            await conn.close()
        assert live(sim) == 0


async def test_never_running_is_destroyed_at_the_ready_timeout() -> None:
    with simulator(faults={"slow_ready_s": 10**9}) as (sim, url):
        conn = connector(url)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"not running within 0.3s; deployment .* was destroyed"):
                await conn.allocate(want(ready_timeout_s=0.3))
            assert time.monotonic() - t0 < 2.0
        finally:
            await conn.close()
        assert live(sim) == 0 and [d.phase for d in sim.deployments.values()] == ["destroyed"]


@pytest.mark.parametrize(("used_h", "kept_h"), [(0.25, 1.0), (2.5, 2.5)])
async def test_release_keeps_the_first_hour_then_refunds_pro_rata(used_h: float, kept_h: float) -> None:
    clock = ManualClock()
    with simulator(clock) as (sim, url):
        conn = connector(url)
        try:
            alloc = await conn.allocate(want(duration_s=4 * 3600))
            paid = alloc.detail["prepaid_usd"]
            assert alloc.usd_per_hour == pytest.approx(paid / 4)
            clock.advance(used_h * 3600)
            rel = await conn.release(alloc)
        finally:
            await conn.close()
        assert rel.billed_usd == pytest.approx(paid * kept_h / 4)
        assert rel.billed_usd == pytest.approx(sim.spent_usd(alloc.allocation_id))  # what io.net kept
        assert rel.detail["refund_usd"] == pytest.approx(paid - rel.billed_usd)


async def test_a_deployment_that_ends_under_a_strike_is_preempted_and_replaced() -> None:
    clock = ManualClock()
    with simulator(clock) as (sim, url):
        conn = connector(url)
        try:
            await conn.infer(InferRequest(strike_id="s1", model=MODEL, prompt="first", max_tokens=8))
            [first] = sim.deployments.values()
            clock.advance(3600)  # the prepaid hour runs out
            with pytest.raises(Preempted, match="ended under the strike") as info:
                await conn.infer(InferRequest(strike_id="s2", model=MODEL, prompt="second", max_tokens=8))
            assert info.value.billed_usd is not None and 0 <= info.value.billed_usd < 0.01
            assert first.phase == "completed"
            res = await conn.infer(InferRequest(strike_id="s3", model=MODEL, prompt="third", max_tokens=8))
            assert res.text and len(sim.deployments) == 2  # a fresh deployment serves the next strike
        finally:
            await conn.close()
        assert live(sim) == 0


async def test_standing_deployment_is_extended_near_expiry_not_redeployed() -> None:
    with simulator() as (sim, url):
        conn = connector(url, renew_before_s=3601)  # "near expiry" from the start
        try:
            for i in range(3):
                await conn.infer(InferRequest(strike_id=f"s{i}", model=MODEL, prompt="x", max_tokens=4))
            [dep] = sim.deployments.values()
            assert dep.hours == 2  # extended once; then an hour and more remained
            offers = {o.region: o for o in await conn.quote(want())}
            assert offers["US"].warm_models == [MODEL] and offers["US"].available == 64  # 63 to rent + ours
            assert offers["SG"].warm_models == [] and offers["SG"].available == 64
            assert [e.note for e in sim.ledger] == ["prepaid 1 h", "extend 1 h"]
        finally:
            await conn.close()
        assert live(sim) == 0


async def test_a_422_names_the_fields_io_net_rejected() -> None:
    with simulator() as (sim, url):
        conn = connector(url, image_url="")
        try:
            with pytest.raises(ProviderError, match=r"HTTP 422: invalid request: body\.image_url: ") as info:
                await conn.allocate(want())
        finally:
            await conn.close()
        assert info.value.http_status == 422 and sim.deployments == {}


def test_422_envelope_lists_every_field() -> None:
    raw = (b'{"detail":[{"type":"missing","loc":["query","hardware_id"],"msg":"Field required","input":null},'
           b'{"type":"greater_than_equal","loc":["body","duration_hours"],"msg":"Input should be greater than or '
           b'equal to 1","input":0}]}')
    assert envelope_message(raw) == ("invalid request: query.hardware_id: Field required; body.duration_hours: "
                                     "Input should be greater than or equal to 1")
    assert envelope_message(b'{"detail":"Invalid API key"}') == "Invalid API key"
    assert envelope_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"


async def test_a_wrong_key_is_an_auth_error_that_never_shows_the_key() -> None:
    with simulator() as (_, url):
        conn = connector(url, api_key="io-wrong-0123456789")
        try:
            with pytest.raises(ProviderAuthError) as info:
                await conn.allocate(want())
            assert not (await conn.health()).ok
        finally:
            await conn.close()
    assert "io-wrong-0123456789" not in str(info.value) and "io-wrong" not in repr(conn.opts)


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(HomeskilletError, match="gpus_per_contaner"):
        IonetConnector(api_key="k", gpus_per_contaner=2)
    with pytest.raises(HomeskilletError, match=r"duration_hours"):
        IonetConnector(api_key="k", duration_hours=0)
    with pytest.raises(HomeskilletError, match=r"IONET_TEST_UNSET"):
        IonetConnector(api_key_env="IONET_TEST_UNSET")


async def test_the_example_pool_file_builds_a_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("IONET_API_KEY", "from-env")
    [spec] = load_settings(Path(__file__).parents[2] / "examples" / "pools-ionet.toml").pools
    conn = make_connector(spec)
    await conn.close()
    assert isinstance(conn, IonetConnector) and conn.opts.duration_hours == 2


@given(st.binary(max_size=300) | st.builds(lambda v: msgspec.json.encode({"detail": v}),
                                          st.recursive(st.none() | st.text() | st.integers(),
                                                       lambda inner: st.lists(inner) | st.dictionaries(st.text(),
                                                                                                      inner))))
def test_any_error_body_maps_to_one_of_our_errors(raw: bytes) -> None:
    for status in (400, 401, 422, 429, 503):
        with pytest.raises(ProviderError) as info:
            raise_ionet(status, raw)
        assert info.value.http_status == status or isinstance(info.value, RateLimited)


@given(st.floats(0, 1e4), st.integers(1, 1000), st.floats(0, 1e8))
def test_the_first_hour_is_always_kept_and_never_more_than_was_paid(paid: float, hours: int, used_s: float) -> None:
    billed = billed_on_destroy(paid, hours, used_s)
    assert paid / hours - 1e-6 <= billed <= paid + 1e-6


async def test_a_query_is_served_end_to_end_on_an_ionet_pool(nats_url: str) -> None:
    """Orchestrator → NATS strike → pool host → this connector → a deployment in the simulator."""
    from homeskillet.config import PoolSpec
    from homeskillet.testing import start_runtime

    with simulator() as (sim, url):
        options = {"base_url": url, "api_key": "sim-key", "gpu_model": "RTX 4090", "poll_interval_s": 0.01}
        spec = msgspec.convert({"name": "ionet/rtx4090", "provider": "ionet", "pool_class": "standard",
                                "models": [MODEL], "gpu_model": "RTX 4090", "vram_mb": 24576, "tflops": 165.0,
                                "region": "US", "usd_per_hour": 0.5, "options": options}, PoolSpec)
        async with start_runtime(nats_url, [spec]) as rt:
            answer = await rt.ask(prompt="What is a prepaid hour?", covenant=MODEL,
                                  overrides={"fallback": {"steps": ["fail"]}})
            assert answer.fragments[0].pool == "ionet/rtx4090" and answer.text
            assert live(sim) == 1
        assert live(sim) == 0  # stopping the pool destroyed its deployment
