"""Vast.ai's quirks and failure modes, over real HTTP against the seeded simulator with faults."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest
from pair_vastai import MODEL, connector
from sim_http import RetryAfter, config, served

from homeskillet.errors import BadRequest, NoCapacity, Preempted, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest
from homeskillet.providers.rented import billed_seconds
from homeskillet.providers.vastai import VastConnector
from homeskillet.providers.vastai.wire import (
    Envelope,
    VastInstance,
    error_for,
    offer_ref,
    phase,
    rent_body,
    search_query,
)
from homeskillet.sims.vastai import VastState, create_app
from homeskillet.sims.vastai.market import HOURS_PER_MONTH

WANT = AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=10.0)
SPOT = AllocationRequest(model=MODEL, min_vram_mb=20_000, preemptible=True, ready_timeout_s=10.0)


def ask(prompt: str = "hello", **kw: Any) -> InferRequest:
    return InferRequest(strike_id=f"s-{prompt}", model=MODEL, prompt=prompt, max_tokens=12, **kw)


def sim(app: Any) -> VastState:
    state: VastState = app.state.sim
    return state


# -- the pure half, on recorded payloads ---------------------------------------------------------

def test_the_search_speaks_vasts_filter_language() -> None:
    want = AllocationRequest(gpu_model="RTX 4090, H100 SXM", count=2, min_vram_mb=22_000, max_vram_mb=90_000,
                             min_tflops=50, max_usd_per_hour=1.5, region="US,CA", preemptible=True, duration_s=7200)
    q = search_query(want, disk_gb=40, verified=True, min_reliability=0.95, limit=8)
    assert q["gpu_name"] == {"in": ["RTX 4090", "H100 SXM"]} and q["num_gpus"] == {"eq": 2}
    assert q["gpu_ram"] == {"gte": 22_000, "lte": 90_000}  # MB per GPU, as Vast counts
    assert q["total_flops"] == {"gte": 50} and q["dph_total"] == {"lte": 1.5}
    assert q["geolocation"] == {"in": ["US", "CA"]} and q["reliability2"] == {"gte": 0.95}
    assert q["type"] == "bid" and q["order"] == [["dph_total", "asc"]] and q["allocated_storage"] == 40
    assert q["duration"] == {"gte": 7200} and q["verified"] == {"eq": True} and q["rentable"] == {"eq": True}
    assert search_query(AllocationRequest(), disk_gb=10, verified=False, min_reliability=0, limit=4)["type"] == \
        "on-demand"


def test_rent_body_bids_or_rents_on_demand() -> None:
    on_demand = msgspec.json.decode(msgspec.json.encode(rent_body(
        image="vllm/vllm-openai:latest", disk_gb=40, label="hs-x", port=8000, args=["--model", MODEL], price=None)))
    assert on_demand["price"] is None and on_demand["env"] == {"-p 8000:8000": "1"} and on_demand["client_id"] == "me"
    assert on_demand["runtype"] == "args" and on_demand["args"] == ["--model", MODEL]
    bid = msgspec.to_builtins(rent_body(image="i", disk_gb=1, label="l", port=8000, args=[], price=0.31))
    assert bid["price"] == 0.31 and "args" not in bid and "runtype" not in bid
    assert offer_ref("4365231") == (4365231, False) and offer_ref("4365231:bid") == (4365231, True)
    with pytest.raises(ValueError, match=r"not a Vast\.ai offer id"):
        offer_ref("H100@SECURE")


def test_instance_phases_from_recorded_payloads() -> None:
    outbid = VastInstance(id=1, actual_status="exited", cur_state="stopped", intended_status="stopped",
                          next_state="stopped", status_msg="Instance stopped: outbid by a higher bidder.")
    oci = VastInstance(id=2, actual_status="created", cur_state="running", intended_status="running",
                       status_msg="Error response from daemon: failed to create task: OCI runtime create failed: x")
    assert phase(outbid) == "stopped" and phase(oci) == "failed" and phase(None) == "gone"
    assert phase(VastInstance(id=3, actual_status="created", intended_status="running")) == "starting"
    assert phase(VastInstance(id=4, actual_status="running", intended_status="running")) == "running"


def test_success_false_envelopes_map_to_our_errors_even_under_200() -> None:
    gone = error_for(200, Envelope(success=False, error="no_such_ask", msg="Instance type by id 5 is not available."))
    assert isinstance(gone, NoCapacity) and gone.retryable
    assert isinstance(error_for(401, Envelope(success=False, error="auth_error", msg="bad key")), ProviderAuthError)
    bad = error_for(400, Envelope(success=False, error="invalid_args", msg="price must be positive"))
    assert type(bad) is ProviderError and "price must be positive" in bad.message
    limited = error_for(429, Envelope(detail="API requests too frequent"), retry_after_s=2.0)
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 2.0


# -- over HTTP -----------------------------------------------------------------------------------

async def test_offers_fit_the_request_in_our_units() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", disk_gb=40)
        try:
            want = AllocationRequest(min_vram_mb=24_000, max_usd_per_hour=1.0, preemptible=True)
            offers = await conn.quote(want)
        finally:
            await conn.close()
    market = {o.id: o for o in sim(app).offers}
    assert offers and any(o.preemptible for o in offers) and any(not o.preemptible for o in offers)
    for o in offers:
        row = market[offer_ref(o.offer_id)[0]]
        disk = 40 * row.storage_cost / HOURS_PER_MONTH  # $/GB/month for the disk we would rent
        price = (row.min_bid if o.preemptible else row.dph_base) + disk
        assert o.usd_per_hour == pytest.approx(price) and o.usd_per_hour <= 1.0
        assert o.vram_mb == row.gpu_ram >= 24_000 and o.count == row.num_gpus == 1
        assert row.verified and not row.external and o.region == row.geolocation.rsplit(", ", 1)[-1]
    assert [o.usd_per_hour for o in offers] == sorted(o.usd_per_hour for o in offers)


async def test_quotes_are_cheap_enough_to_ask_every_few_seconds() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", quote_ttl_s=30.0)
        try:
            first = await asyncio.gather(*(conn.quote(WANT) for _ in range(5)))
            again = await conn.quote(WANT)
            assert conn.api.calls == 1 and all(q == first[0] for q in first) and again == first[0]
            await conn.quote(SPOT)  # another request is another search
            assert conn.api.calls == 2
        finally:
            await conn.close()


async def test_refused_rentals_end_in_no_capacity_and_leave_nothing() -> None:
    app = create_app(config(refuse_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(NoCapacity, match="tried 3 offer"):
                await conn.allocate(WANT)
        finally:
            await conn.close()
    assert sim(app).counters.get("refused") == 3 and not sim(app).instances


async def test_a_stale_offer_is_skipped_for_the_next() -> None:
    app = create_app(config(seed=4, stale_offer_rate=0.5))  # seeded: the first offer goes stale
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            before = {o.offer_id for o in await conn.quote(WANT)}
            alloc = await conn.allocate(WANT)
            assert alloc.status == "running" and len(sim(app).instances) == 1
            await conn.release(alloc)
        finally:
            await conn.close()
    assert sim(app).counters.get("stale", 0) >= 1  # an offer vanished between search and rent
    gone = before - {str(o.id) for o in sim(app).offers}
    assert gone and str(alloc.detail["ask_id"]) not in gone and not sim(app).instances


async def test_only_stale_offers_is_no_capacity() -> None:
    app = create_app(config(stale_offer_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(NoCapacity, match="not available"):
                await conn.allocate(WANT)
        finally:
            await conn.close()
    assert sim(app).counters.get("stale") == 3 and not sim(app).instances


async def test_a_half_created_instance_is_destroyed() -> None:
    app = create_app(config(half_created_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(NoCapacity, match="left stopped"):
                await conn.allocate(WANT)
        finally:
            await conn.close()
    counters = sim(app).counters
    assert counters.get("half_created") == 3 and counters.get("destroyed") == 3 and not sim(app).instances


async def test_a_bid_under_the_minimum_leaves_a_stopped_instance_that_is_destroyed() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            spot = next(o for o in await conn.quote(SPOT) if o.preemptible)
            low = AllocationRequest(model=MODEL, preemptible=True, offer_id=spot.offer_id, bid_usd_per_hour=0.01)
            with pytest.raises(NoCapacity, match="below min_bid"):
                await conn.allocate(low)
        finally:
            await conn.close()
    assert sim(app).counters.get("half_created") == 1 and sim(app).counters.get("destroyed") == 1
    assert not sim(app).instances


async def test_an_oci_error_is_a_provider_error_and_the_instance_is_destroyed() -> None:
    app = create_app(config(extra={"oci_error_rate": 1.0}))
    with served(app) as url:
        conn = connector(url, "sim-key", ready_timeout_s=5.0)
        try:
            with pytest.raises(ProviderError, match="OCI runtime create failed") as info:
                await conn.allocate(WANT)
        finally:
            await conn.close()
    assert not isinstance(info.value, NoCapacity) and not sim(app).instances


async def test_slow_readiness_past_the_timeout_destroys_the_instance() -> None:
    app = create_app(config(slow_ready_s=3600.0))  # frozen clock: never ready
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"not serving within 0\.3s") as info:
                await conn.allocate(AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=0.3))
            assert time.monotonic() - t0 < 3.0 and info.value.retryable
        finally:
            await conn.close()
    assert not sim(app).instances


async def test_slow_readiness_within_the_timeout_serves() -> None:
    app = create_app(config(time_scale=0.002, slow_ready_s=150.0))  # ready ~0.3 s of real time later
    with served(app) as url:
        conn = connector(url, "sim-key", poll_s=0.05)
        try:
            alloc = await conn.allocate(WANT)
            assert conn.api.calls > 3  # it polled while the image was "pulling"
            assert (await conn.infer(ask(allocation=alloc))).text
            await conn.release(alloc)
        finally:
            await conn.close()
    assert not sim(app).instances


async def test_429_is_retried_as_told_then_raised() -> None:
    app = RetryAfter(create_app(config(rate_limit_rate=1.0)), 0.1)
    with served(app) as url:
        conn = connector(url, "sim-key", retries=3)
        try:
            t0 = time.monotonic()
            with pytest.raises(RateLimited) as info:
                await conn.quote(WANT)
            assert time.monotonic() - t0 >= 0.3 and info.value.retry_after_s == 0.1
        finally:
            await conn.close()
    assert sim(app).counters["rate_limited"] == 4


async def test_a_retry_after_longer_than_we_wait_is_raised_at_once() -> None:
    app = RetryAfter(create_app(config(rate_limit_rate=1.0)), 120)
    with served(app) as url:
        conn = connector(url, "sim-key", max_retry_wait_s=5.0)
        try:
            with pytest.raises(RateLimited) as info:
                await conn.quote(WANT)
            assert info.value.retry_after_s == 120 and info.value.retryable
        finally:
            await conn.close()
    assert sim(app).counters["rate_limited"] == 1


async def test_occasional_429s_are_absorbed() -> None:
    app = RetryAfter(create_app(config(seed=2, rate_limit_rate=0.4)), 0.01)
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            alloc = await conn.allocate(WANT)
            assert (await conn.infer(ask(allocation=alloc))).text
            await conn.release(alloc)
        finally:
            await conn.close()
    assert sim(app).counters.get("rate_limited", 0) >= 1 and not sim(app).instances


@pytest.mark.parametrize("faults", [{"outage": True}, {"unavailable_rate": 1.0}])
async def test_an_outage_is_a_retryable_provider_error(faults: dict[str, Any]) -> None:
    app = create_app(config(**faults))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(ProviderError) as info:
                await conn.allocate(WANT)
            assert type(info.value) is ProviderError and info.value.http_status == 503 and info.value.retryable
            assert not (await conn.health()).ok
        finally:
            await conn.close()


async def test_a_hung_request_is_a_retryable_error_within_the_connectors_timeout() -> None:
    app = create_app(config(time_scale=1.0, timeout_rate=1.0, timeout_s=1.5))
    with served(app) as url:
        conn = connector(url, "sim-key", timeout_s=0.3)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"no answer within 0\.3s") as info:
                await conn.quote(WANT)
            assert time.monotonic() - t0 < 1.2 and info.value.retryable
        finally:
            await conn.close()


async def test_outbid_mid_inference_is_preempted_and_billed_per_second() -> None:
    app = create_app(config(preempt_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            alloc = await conn.allocate(SPOT)
            assert alloc.preemptible and alloc.detail["bid_usd_per_hour"] > 0
            with pytest.raises(Preempted, match="outbid") as info:
                await conn.infer(ask(allocation=alloc))
            # Vast bills by the second: the evicted part took under a second at the instance's rate.
            assert info.value.billed_usd == pytest.approx(billed_seconds(alloc.usd_per_hour, 0.5))
            assert info.value.billed_usd == pytest.approx(alloc.usd_per_hour / 3600)
            assert (await conn.metrics(alloc)).status == "preempted"
            await conn.release(alloc)
        finally:
            await conn.close()
    assert sim(app).counters["outbid"] == 1 and not sim(app).instances


async def test_the_standing_instance_is_dropped_when_outbid_and_remade() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", interruptible=True)
        try:
            assert (await conn.infer(ask("one"))).text
            first = conn.standing.current
            assert first is not None and first.preemptible
            async with httpx.AsyncClient() as control:  # the simulator's control, not Vast's API
                (await control.post(f"{url}/_sim/instances/{first.allocation_id}/outbid")).raise_for_status()
            with pytest.raises(Preempted):
                await conn.infer(ask("two"))
            assert conn.standing.current is None and int(first.allocation_id) not in sim(app).instances
            assert (await conn.infer(ask("three"))).text  # on a fresh instance
            assert conn.standing.made == 2 and len(sim(app).instances) == 1
        finally:
            await conn.close()
    assert not sim(app).instances


async def test_a_stream_cut_by_an_outbid_is_preempted() -> None:
    app = create_app(config(preempt_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key", interruptible=True)
        pieces: list[str] = []
        try:
            with pytest.raises(Preempted):
                async for piece in conn.stream(ask("stream this please")):
                    pieces.append(piece)
            assert pieces  # half the answer arrived before the box went away
        finally:
            await conn.close()
    assert not sim(app).instances


async def test_metrics_count_what_ran_on_the_instance() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            alloc = await conn.allocate(WANT)
            for p in ("a", "b"):
                await conn.infer(ask(p, allocation=alloc))
            m = await conn.metrics(alloc)
            assert m.status == "running" and m.inference_count == 2 and m.average_latency_ms
            assert m.gpu_utilization == pytest.approx(0.35) and m.cost_usd is not None and m.cost_usd >= 0
            rel = await conn.release(alloc)
            assert rel.detail["destroyed"] is True
            assert (await conn.release(alloc)).detail["destroyed"] is False  # already gone is released
        finally:
            await conn.close()


async def test_bad_input_is_refused_before_any_call() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(BadRequest, match="set preemptible"):
                await conn.allocate(AllocationRequest(bid_usd_per_hour=0.3))
            with pytest.raises(BadRequest, match="rents GPUs"):
                await conn.allocate(AllocationRequest(accelerator="tpu"))
            with pytest.raises(BadRequest, match=r"not a Vast\.ai offer id"):
                await conn.allocate(AllocationRequest(offer_id="H100@SECURE"))
            with pytest.raises(BadRequest, match="set bid_usd_per_hour"):
                await conn.allocate(AllocationRequest(offer_id="123:bid", preemptible=True))
            assert conn.api.calls == 0 and not sim(app).instances
        finally:
            await conn.close()
    with pytest.raises(BadRequest, match="placeholders"):
        connector("http://127.0.0.1:9", "k", endpoint="http://{host}:{port}")


async def test_the_example_pools_build_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("VAST_API_KEY", "from-the-environment")
    pools = load_settings(Path(__file__).parents[2] / "examples" / "pools-vastai.toml").pools
    assert [p.provider for p in pools] == ["vastai", "vastai"]
    for spec in pools:
        conn = make_connector(spec)
        try:
            assert isinstance(conn, VastConnector) and conn.standing_request.model == spec.models[0]
            assert "from-the-environment" not in repr(vars(conn.api))
        finally:
            await conn.close()
