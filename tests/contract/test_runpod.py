"""RunPod's quirks and failure modes, over real HTTP against the seeded simulator with faults."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest
from pair_runpod import MODEL, connector
from sim_http import RetryAfter, config, served

from homeskillet.errors import BadRequest, NoCapacity, Preempted, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest
from homeskillet.providers.rented import billed_seconds
from homeskillet.providers.runpod import RunPodConnector
from homeskillet.providers.runpod.wire import (
    DEPLOY_SPOT,
    GqlError,
    OfferRef,
    deploy_input,
    error_for,
    is_gone,
    parse_offer_id,
    quote_variables,
)
from homeskillet.sims.runpod import NO_STOCK, RunPodState, create_app

RTX4090 = "NVIDIA GeForce RTX 4090"
WANT = AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=10.0)
SPOT = AllocationRequest(model=MODEL, min_vram_mb=20_000, preemptible=True, ready_timeout_s=10.0)


def ask(prompt: str = "hello", **kw: Any) -> InferRequest:
    return InferRequest(strike_id=f"s-{prompt}", model=MODEL, prompt=prompt, max_tokens=12, **kw)


def sim(app: Any) -> RunPodState:
    state: RunPodState = app.state.sim
    return state


def no_stock() -> dict[str, dict[str, int]]:
    from homeskillet.sims.runpod.catalog import default_data_centers, default_gpu_types

    return {g.id: {d.id: 0 for d in default_data_centers()} for g in default_gpu_types()}


# -- the pure half, on recorded payloads ---------------------------------------------------------

def test_errors_under_http_200_map_by_message_and_code() -> None:
    assert isinstance(error_for(200, [GqlError(message=NO_STOCK)]), NoCapacity)
    low_bid = "Your bid of $0.010/GPU/hr is below the current minimum bid of $0.350/GPU/hr for NVIDIA L40S."
    assert isinstance(error_for(200, [GqlError(message=low_bid)]), NoCapacity)
    auth = error_for(200, [GqlError(message="Not allowed", extensions={"code": "UNAUTHENTICATED"})])
    assert isinstance(auth, ProviderAuthError) and not auth.retryable
    assert isinstance(error_for(401, [GqlError(message="Unauthorized request, please check your API key.")]),
                      ProviderAuthError)
    assert isinstance(error_for(429, []), RateLimited)
    other = error_for(200, [GqlError(message='No GPU type with id "X"; query gpuTypes for valid ids.')])
    assert type(other) is ProviderError and "No GPU type" in other.message and other.retryable
    assert is_gone([GqlError(message='Pod "abc" not found.')]) and not is_gone([GqlError(message=NO_STOCK)])


def test_documents_carry_values_as_variables_only() -> None:
    spec = msgspec.to_builtins(deploy_input(
        name="hs-x", image="vllm/vllm-openai:latest", ref=OfferRef(RTX4090, "SECURE", True), count=2,
        region="EU-RO-1", container_disk_gb=40, volume_gb=0, port=8000, docker_args='--model "x"; rm -rf /',
        min_vcpu=4, min_memory_gb=31, bid_per_gpu=0.4))
    assert spec["bidPerGpu"] == 0.4 and spec["gpuCount"] == 2 and spec["dataCenterId"] == "EU-RO-1"
    assert spec["ports"] == "8000/http" and spec["cloudType"] == "SECURE" and spec["minMemoryInGb"] == 31
    assert spec["imageName"] == "vllm/vllm-openai:latest" and "countryCode" not in spec
    assert "$input" in DEPLOY_SPOT and "rm -rf" not in DEPLOY_SPOT  # the document is a constant
    v = quote_variables(AllocationRequest(gpu_model=RTX4090, count=2, region="US"))
    assert v["gpuTypes"] == {"id": RTX4090} and v["secure"] == {"gpuCount": 2, "secureCloud": True,
                                                                 "countryCode": "US"}
    assert parse_offer_id(f"{RTX4090}@COMMUNITY/spot") == OfferRef(RTX4090, "COMMUNITY", True)
    with pytest.raises(ValueError, match="not a RunPod offer id"):
        parse_offer_id("4365231:bid")


# -- over HTTP -----------------------------------------------------------------------------------

async def test_offers_are_priced_per_gpu_times_count_in_our_units() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", cloud_type="SECURE")
        try:
            offers = await conn.quote(AllocationRequest(gpu_model=RTX4090, count=2, preemptible=True))
        finally:
            await conn.close()
    gpu = sim(app).gpu_types[RTX4090]
    on_demand = next(o for o in offers if not o.preemptible)
    spot = next(o for o in offers if o.preemptible)
    assert on_demand.usd_per_hour == pytest.approx(gpu.secure_price * 2)
    assert spot.usd_per_hour == pytest.approx(gpu.secure_spot_price * 2)
    assert on_demand.vram_mb == 24 * 1024 and on_demand.count == 2 and on_demand.gpu_model == RTX4090
    assert {o.offer_id for o in offers} == {f"{RTX4090}@SECURE", f"{RTX4090}@SECURE/spot"}


async def test_out_of_stock_types_are_not_offered_and_allocate_is_no_capacity() -> None:
    app = create_app(config(extra={"stock": no_stock()}))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            assert await conn.quote(WANT) == []  # stockStatus null everywhere
            with pytest.raises(NoCapacity, match="nothing in stock"):
                await conn.allocate(WANT)
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_quotes_are_cheap_enough_to_ask_every_few_seconds() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", quote_ttl_s=30.0)
        try:
            first = await asyncio.gather(*(conn.quote(WANT) for _ in range(5)))
            assert await conn.quote(WANT) == first[0] and conn.api.calls == 1
        finally:
            await conn.close()


async def test_stock_that_flips_at_deploy_is_no_capacity() -> None:
    app = create_app(config(stale_offer_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(NoCapacity, match="no longer any instances available") as info:
                await conn.allocate(WANT)
            assert "tried 3 offer" in info.value.message
        finally:
            await conn.close()
    assert sim(app).counters["stale"] == 3 and not sim(app).pods


async def test_a_refused_deploy_that_left_a_pod_behind_is_terminated() -> None:
    app = create_app(config(half_created_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(NoCapacity):
                await conn.allocate(WANT)
        finally:
            await conn.close()
    counters = sim(app).counters
    assert counters["half_created"] == 3 and counters["terminated"] == 3 and not sim(app).pods


async def test_a_bid_under_the_floor_is_no_capacity_and_creates_nothing() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            low = AllocationRequest(model=MODEL, preemptible=True, offer_id=f"{RTX4090}@SECURE/spot",
                                    bid_usd_per_hour=0.01)
            with pytest.raises(NoCapacity, match="below the current minimum bid"):
                await conn.allocate(low)
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_a_graphql_error_under_200_is_a_provider_error() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(ProviderError, match="No GPU type") as info:
                await conn.allocate(AllocationRequest(model=MODEL, offer_id="NVIDIA Imaginary@SECURE"))
            assert type(info.value) is ProviderError and info.value.http_status == 200
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_runtime_null_past_the_timeout_terminates_the_pod() -> None:
    app = create_app(config(slow_ready_s=3600.0))  # frozen clock: runtime stays null
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match="runtime null") as info:
                await conn.allocate(AllocationRequest(model=MODEL, min_vram_mb=20_000, ready_timeout_s=0.3))
            assert time.monotonic() - t0 < 3.0 and info.value.retryable
        finally:
            await conn.close()
    assert sim(app).counters["terminated"] == 1 and not sim(app).pods


async def test_runtime_that_comes_up_in_time_serves() -> None:
    app = create_app(config(time_scale=0.002, extra={"boot_s": 150.0}))  # up ~0.3 s of real time later
    with served(app) as url:
        conn = connector(url, "sim-key", poll_s=0.05)
        try:
            alloc = await conn.allocate(WANT)
            assert conn.api.calls > 3 and (await conn.infer(ask(allocation=alloc))).text
            await conn.release(alloc)
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_429_is_retried_as_told_then_raised() -> None:
    app = RetryAfter(create_app(config(rate_limit_rate=1.0)), 0.1)
    with served(app) as url:
        conn = connector(url, "sim-key", retries=2)
        try:
            t0 = time.monotonic()
            with pytest.raises(RateLimited) as info:
                await conn.quote(WANT)
            assert time.monotonic() - t0 >= 0.2 and info.value.retry_after_s == 0.1
        finally:
            await conn.close()
    assert sim(app).counters["rate_limited"] == 3


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


async def test_a_spot_pod_exited_mid_inference_is_preempted_and_billed_per_second() -> None:
    app = create_app(config(preempt_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            alloc = await conn.allocate(SPOT)
            assert alloc.preemptible and alloc.usd_per_hour == pytest.approx(alloc.detail["bid_per_gpu"] * alloc.count)
            with pytest.raises(Preempted, match="exited mid-inference") as info:
                await conn.infer(ask(allocation=alloc))
            assert info.value.billed_usd == pytest.approx(billed_seconds(alloc.usd_per_hour, 0.5))
            assert (await conn.metrics(alloc)).status == "preempted"
            await conn.release(alloc)
        finally:
            await conn.close()
    assert sim(app).counters["preempted"] == 1 and not sim(app).pods


async def test_the_standing_pod_is_dropped_when_preempted_and_remade() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key", interruptible=True)
        try:
            assert (await conn.infer(ask("one"))).text
            first = conn.standing.current
            assert first is not None and first.preemptible
            async with httpx.AsyncClient() as control:  # the simulator's control, not RunPod's API
                (await control.post(f"{url}/_sim/pods/{first.allocation_id}/preempt")).raise_for_status()
            with pytest.raises(Preempted):
                await conn.infer(ask("two"))
            assert conn.standing.current is None and first.allocation_id not in sim(app).pods
            assert (await conn.infer(ask("three"))).text
            assert conn.standing.made == 2 and len(sim(app).pods) == 1
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_a_stream_cut_by_preemption_is_preempted() -> None:
    app = create_app(config(preempt_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key", interruptible=True)
        pieces: list[str] = []
        try:
            with pytest.raises(Preempted):
                async for piece in conn.stream(ask("stream this please")):
                    pieces.append(piece)
            assert pieces
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_on_demand_pods_are_never_preempted() -> None:
    app = create_app(config(preempt_rate=1.0))
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            for p in ("a", "b"):
                assert (await conn.infer(ask(p))).text
            alloc = conn.standing.current
            assert alloc is not None and not alloc.preemptible
            m = await conn.metrics(alloc)
            assert m.status == "running" and m.inference_count == 2 and m.gpu_utilization == 0.0
            assert m.memory_used_mb == 0.0 and m.average_latency_ms
        finally:
            await conn.close()
    assert not sim(app).pods


async def test_bad_input_is_refused_before_any_call() -> None:
    app = create_app(config())
    with served(app) as url:
        conn = connector(url, "sim-key")
        try:
            with pytest.raises(BadRequest, match="set preemptible"):
                await conn.allocate(AllocationRequest(bid_usd_per_hour=0.3))
            with pytest.raises(BadRequest, match="count must be at least 1"):
                await conn.quote(AllocationRequest(count=0))
            with pytest.raises(BadRequest, match="is spot: set bid_usd_per_hour"):
                await conn.allocate(AllocationRequest(offer_id=f"{RTX4090}@SECURE/spot", preemptible=True))
            assert conn.api.calls == 0 and not sim(app).pods
        finally:
            await conn.close()
    with pytest.raises(BadRequest, match="cloud_type 'CHEAP'"):
        connector("http://127.0.0.1:9", "k", cloud_type="CHEAP")


async def test_the_example_pools_build_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("RUNPOD_API_KEY", "from-the-environment")
    pools = load_settings(Path(__file__).parents[2] / "examples" / "pools-runpod.toml").pools
    assert [p.provider for p in pools] == ["runpod", "runpod"]
    for spec in pools:
        conn = make_connector(spec)
        try:
            assert isinstance(conn, RunPodConnector) and conn.standing_request.model == spec.models[0]
        finally:
            await conn.close()
