"""Cloud TPU connector against the TPU simulator over real HTTP: Operations, queued resources,
preemption, Google's error envelopes, and nothing left behind when a create fails."""

from __future__ import annotations

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
from homeskillet.providers.tpu import TpuConnector, google
from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.tpu import ManualClock, Queue, TpuSim, create_app
from homeskillet.testing import serve_asgi

MODEL = "gemma-2b"
ZONE = "us-west4-a"  # v5litepod in the simulator's default zones
SIM_ENDPOINT = "{base_url}/node/{zone}/{node_id}"
V5E_ON_DEMAND, V5E_SPOT = 8 * 1.20, 8 * 0.42  # catalogue: USD per chip-hour x 8 chips


class TickClock(ManualClock):
    """Simulated time that moves ``step`` seconds each time the simulator reads it: Operations
    finish while the connector polls, and nobody sleeps."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def now(self) -> float:
        return self.advance(self.step)


class Sim:
    def __init__(self, app: Any, url: str) -> None:
        self.app, self.url = app, url
        self.sim: TpuSim = app.state.sim
        self.queue: Queue = app.state.queue

    def live_nodes(self) -> list[str]:
        return [n.node_id for n in self.sim.nodes.values() if n.state != "DELETING"]


@contextmanager
def simulator(clock: ManualClock | None = None, *, time_scale: float = 0, **extra: Any) -> Iterator[Sim]:
    faults = FaultPlan(**extra.pop("faults", {}))
    for knob in ("create_s", "fail_s", "op_s"):
        extra.setdefault(knob, 0)
    app = create_app(SimConfig(seed=9, time_scale=time_scale, faults=faults, extra=extra),
                     clock=clock or (ManualClock() if time_scale == 0 else None))
    with serve_asgi(app, "/-/up") as url:  # any answer: a 404 works even during an outage
        yield Sim(app, url)


def connector(url: str, **over: Any) -> TpuConnector:
    options: dict[str, Any] = {"base_url": url, "api_key": "sim-key", "project": "p1", "zone": ZONE,
                               "endpoint": SIM_ENDPOINT, "poll_interval_s": 0.01, "timeout_s": 2.0,
                               "infer_timeout_s": 5.0, "ready_timeout_s": 5.0, "release_timeout_s": 5.0}
    return TpuConnector(**(options | over))


def want(**over: Any) -> AllocationRequest:
    return AllocationRequest(**({"model": MODEL, "accelerator": "tpu", "ready_timeout_s": 5.0} | over))


def strike(n: int = 1, **over: Any) -> InferRequest:
    return InferRequest(**({"strike_id": f"s{n}", "model": MODEL, "prompt": f"question {n}", "max_tokens": 8} | over))


async def test_quote_prices_from_the_catalogue_per_chip_hour() -> None:
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    with simulator() as s:
        client = httpx.AsyncClient(base_url=s.url, event_hooks={"request": [count]})
        conn = connector(s.url, client=client)
        cheap = connector(s.url, on_demand_usd_per_chip_hour=1.0)
        try:
            [on_demand] = await conn.quote(want())
            assert on_demand.usd_per_hour == pytest.approx(V5E_ON_DEMAND) and not on_demand.preemptible
            assert (on_demand.accelerator, on_demand.gpu_model, on_demand.count) == ("tpu", "v5litepod-8", 8)
            assert on_demand.vram_mb == 16 * 1024 and on_demand.region == ZONE and on_demand.available == 1
            both = await conn.quote(want(preemptible=True))
            assert [o.usd_per_hour for o in both] == pytest.approx([V5E_ON_DEMAND, V5E_SPOT])
            assert [o.preemptible for o in both] == [False, True]
            assert len(sent) == 1  # one cached acceleratorTypes read; prices need no call at all
            assert [o.usd_per_hour for o in await cheap.quote(want())] == pytest.approx([8.0])
            assert await conn.quote(want(accelerator="gpu")) == []
            assert await conn.quote(want(min_vram_mb=256 * 1024)) == []  # 128 GB of HBM on the node
        finally:
            await conn.close()
            await cheap.close()
            await client.aclose()


async def test_a_zone_without_the_type_offers_nothing() -> None:
    with simulator() as s:
        conn = connector(s.url, accelerator_type="v4-8")  # v4 lives in us-central2-b, not us-west4-a
        try:
            assert await conn.quote(want()) == []
            with pytest.raises(NoCapacity, match="does not fit"):
                await conn.allocate(want())
        finally:
            await conn.close()


async def test_create_polls_the_operation_and_the_node_until_ready() -> None:
    """Operations are pending for a while (``done`` omitted, proto3), then the node is READY."""
    with simulator(TickClock(step=10.0), create_s=90, op_s=30) as s:
        conn = connector(s.url)
        try:
            alloc = await conn.allocate(want())
            node = s.sim.nodes[alloc.allocation_id]
            assert node.state == "READY" and not node.spot
            assert alloc.endpoint == f"{s.url}/node/{ZONE}/{node.node_id}"
            assert alloc.usd_per_hour == pytest.approx(V5E_ON_DEMAND) and alloc.count == 8
            assert (node.body.labels or {})["model"] == MODEL
            res = await conn.infer(strike(allocation=alloc))
            assert res.text and 0 < res.completion_tokens <= 8
            rel = await conn.release(alloc)
            assert rel.detail["done"] and rel.billed_usd is not None and rel.billed_usd >= 0
        finally:
            await conn.close()
        assert s.sim.nodes == {}  # the delete Operation was waited for


def test_a_pending_operation_without_done_is_not_done() -> None:
    op = google.decode(b'{"name": "projects/p/locations/z/operations/o1", "metadata": {"verb": "create"}}',
                       google.Operation)
    assert op.done is False and op.error is None


async def test_resource_exhausted_is_no_capacity_and_leaves_nothing() -> None:
    posts: list[str] = []

    async def count(request: httpx.Request) -> None:
        if request.method == "POST":
            posts.append(request.url.path)

    with simulator(faults={"refuse_rate": 1.0}) as s:
        client = httpx.AsyncClient(base_url=s.url, event_hooks={"request": [count]})
        conn = connector(s.url, client=client)
        try:
            with pytest.raises(NoCapacity, match="RESOURCE_EXHAUSTED: There is no more capacity"):
                await conn.allocate(want())
            assert s.sim.nodes == {}
            [offer] = await conn.quote(want())
            assert offer.available == 0  # the pool bids from what Google just said
            with pytest.raises(NoCapacity, match=r"no .* capacity less than 60s ago"):
                await conn.allocate(want())
            assert len(posts) == 1  # the cooldown spared Google a second doomed create
        finally:
            await conn.close()
            await client.aclose()


async def test_a_half_created_stopped_node_is_deleted() -> None:
    with simulator(faults={"half_created_rate": 1.0}) as s:
        conn = connector(s.url)
        try:
            with pytest.raises(ProviderError, match="INTERNAL") as info:
                await conn.allocate(want())
            assert type(info.value) is ProviderError and info.value.retryable
        finally:
            await conn.close()
        assert s.sim.nodes == {} and s.sim.cost_usd() == 0


async def test_never_ready_is_cancelled_at_the_ready_timeout() -> None:
    with simulator(faults={"slow_ready_s": 10**9}) as s:
        conn = connector(s.url)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"did not finish within 0.3s"):
                await conn.allocate(want(ready_timeout_s=0.3))
            assert time.monotonic() - t0 < 2.0
        finally:
            await conn.close()
        assert s.sim.nodes == {}
        [op] = [o for o in s.sim.operations.values() if o.verb == "create"]
        assert op.cancel_requested and op.error and op.error["code"] == 1  # CANCELLED


async def test_spot_capacity_comes_through_a_queued_resource() -> None:
    with simulator() as s:
        conn = connector(s.url, spot=True)
        try:
            res = await conn.infer(strike())
            assert res.text
            [qr] = s.queue.items.values()
            assert qr.spot and qr.state == "ACTIVE"
            [node] = s.sim.nodes.values()
            assert node.spot and node.queued_resource == qr.name
            assert (await conn.health()).warm_models == [MODEL]
            on_demand, spot = await conn.quote(want(preemptible=True))
            assert spot.warm_models == [MODEL] and spot.available == 2  # the held node, plus one to rent
            assert on_demand.warm_models == [] and on_demand.available == 1
        finally:
            await conn.close()
        assert s.queue.items == {} and s.sim.nodes == {}  # close() deleted the queued resource and its node


async def test_no_spot_capacity_in_time_is_no_capacity_and_the_queue_entry_is_deleted() -> None:
    with simulator(zone_chips={ZONE: {"v5litepod": 0}}) as s:
        conn = connector(s.url)
        try:
            with pytest.raises(NoCapacity, match=r"no spot v5litepod-8 capacity in us-west4-a within 0.3s"):
                await conn.allocate(want(preemptible=True, ready_timeout_s=0.3))
        finally:
            await conn.close()
        assert s.queue.items == {} and s.sim.nodes == {}


@pytest.mark.parametrize("streamed", [False, True])
async def test_preemption_mid_inference_is_preempted_billed_per_second(streamed: bool) -> None:
    with simulator(faults={"preempt_rate": 1.0}) as s:
        conn = connector(s.url, spot=True)
        try:
            t0 = time.perf_counter()
            with pytest.raises(Preempted, match="PREEMPTED") as info:
                if streamed:
                    _ = [p async for p in conn.stream(strike())]
                else:
                    await conn.infer(strike())
            bound = V5E_SPOT * (time.perf_counter() - t0) / 3600
            assert info.value.billed_usd is not None and 0 <= info.value.billed_usd <= bound
            assert s.live_nodes() == []  # the preempted node is being deleted
            s.sim.config.faults.preempt_rate = 0.0
            res = await conn.infer(strike(2))  # a fresh spot node serves the next strike
            assert res.text and len(s.sim.operations) >= 3
        finally:
            await conn.close()
        assert s.live_nodes() == []


@pytest.mark.parametrize(("token", "projects", "status"),
                         [("ya29.wrong-token-123", None, "UNAUTHENTICATED"),
                          ("sim-key", ["another-project"], "PERMISSION_DENIED")])
async def test_google_auth_errors_are_auth_errors(token: str, projects: list[str] | None, status: str) -> None:
    extra = {"projects": projects} if projects else {}
    with simulator(**extra) as s:
        conn = connector(s.url, api_key=token)
        try:
            with pytest.raises(ProviderAuthError, match=status) as info:
                await conn.allocate(want())
        finally:
            await conn.close()
    assert not info.value.retryable and "ya29" not in str(info.value)


async def test_rate_limit_is_rate_limited_with_retry_after() -> None:
    with simulator(faults={"rate_limit_rate": 1.0}) as s:
        conn = connector(s.url)
        try:
            with pytest.raises(RateLimited) as info:
                await conn.quote(want())
        finally:
            await conn.close()
    assert info.value.retry_after_s == 1.0 and info.value.retryable


def test_resource_exhausted_is_a_rate_limit_or_no_capacity_by_its_reason() -> None:
    quota = (b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded for quota metric",'
             b' "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"}]}}')
    stock = (b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "There is no more capacity in the '
             b'zone", "details": []}}')
    assert isinstance(google.http_error(429, quota, retry_after_s=2.0), RateLimited)
    assert type(google.http_error(429, stock)) is NoCapacity
    bad = (b'{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Unknown runtime", "details": ['
           b'{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": '
           b'"node.runtime_version", "description": "Unknown runtime"}]}]}}')
    assert "node.runtime_version" in str(google.http_error(400, bad))
    assert isinstance(google.operation_error(google.Status(code=8, message="x"), "create"), NoCapacity)


@pytest.mark.parametrize("faults", [{"outage": True}, {"unavailable_rate": 1.0}])
async def test_outage_is_a_retryable_provider_error(faults: dict[str, Any]) -> None:
    with simulator(faults=faults) as s:
        conn = connector(s.url)
        try:
            with pytest.raises(ProviderError, match="UNAVAILABLE") as info:
                await conn.allocate(want())
            health = await conn.health()
        finally:
            await conn.close()
    assert type(info.value) is ProviderError and info.value.retryable and info.value.http_status == 503
    assert not health.ok


async def test_a_hung_call_times_out_within_the_connector_timeout() -> None:
    with simulator(time_scale=1.0, faults={"timeout_rate": 1.0, "timeout_s": 2.0}) as s:
        conn = connector(s.url, timeout_s=0.3)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match=r"did not answer within 0\.3s") as info:
                await conn.quote(want())
            assert time.monotonic() - t0 < 1.5 and info.value.retryable
        finally:
            await conn.close()


async def test_an_invalid_option_is_named_by_google_and_creates_nothing() -> None:
    with simulator() as s:
        conn = connector(s.url, runtime_version="no-such-runtime")
        try:
            with pytest.raises(ProviderError, match=r"INVALID_ARGUMENT: .*no-such-runtime") as info:
                await conn.allocate(want())
        finally:
            await conn.close()
        assert info.value.http_status == 400 and s.sim.nodes == {}


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(HomeskilletError, match="project"):
        TpuConnector(api_key="t", zone=ZONE)
    with pytest.raises(HomeskilletError, match="accelerator_type"):
        TpuConnector(api_key="t", project="p", zone=ZONE, accelerator_type="v9-1")
    with pytest.raises(HomeskilletError, match="node_prefix"):
        TpuConnector(api_key="t", project="p", zone=ZONE, node_prefix="Bad_Prefix")


async def test_the_example_pool_file_builds_a_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.from-env")
    [spec] = load_settings(Path(__file__).parents[2] / "examples" / "pools-tpu.toml").pools
    conn = make_connector(spec)
    await conn.close()
    assert isinstance(conn, TpuConnector) and conn.opts.spot and conn.parent.endswith("us-west4-a")


@given(st.integers(400, 599), st.binary(max_size=300) | st.builds(
    lambda code, status, message, details: msgspec.json.encode(
        {"error": {"code": code, "status": status, "message": message, "details": details}}),
    st.integers(0, 600), st.sampled_from(["RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "INVALID_ARGUMENT", "", "X"]),
    st.text(), st.lists(st.dictionaries(st.sampled_from(["reason", "fieldViolations", "@type"]),
                                        st.text() | st.lists(st.dictionaries(st.text(), st.text()))))))
def test_any_google_error_body_maps_to_one_of_our_errors(http_status: int, raw: bytes) -> None:
    err = google.http_error(http_status, raw)
    assert isinstance(err, ProviderError) and err.message


async def test_a_query_is_served_end_to_end_on_a_tpu_pool(nats_url: str) -> None:
    """Orchestrator → NATS strike → pool host → this connector → a spot node in the simulator."""
    from homeskillet.config import PoolSpec
    from homeskillet.testing import start_runtime

    with simulator() as s:
        options = {"base_url": s.url, "api_key": "sim-key", "project": "p1", "zone": ZONE, "spot": True,
                   "endpoint": SIM_ENDPOINT, "poll_interval_s": 0.01, "release_timeout_s": 5.0}
        spec = msgspec.convert({"name": "tpu/v5e-spot", "provider": "tpu", "pool_class": "standard",
                                "models": [MODEL], "accelerator": "tpu", "gpu_model": "v5litepod-8",
                                "vram_mb": 16384, "tflops": 197.0, "region": ZONE, "preemptible": True,
                                "usd_per_hour": V5E_SPOT, "options": options}, PoolSpec)
        async with start_runtime(nats_url, [spec]) as rt:
            answer = await rt.ask(prompt="What is a TPU?", covenant="gemma-2b",
                                  overrides={"fallback": {"steps": ["fail"]}})
            assert answer.fragments[0].pool == "tpu/v5e-spot" and answer.text
            assert len(s.live_nodes()) == 1
        assert s.live_nodes() == [] and s.queue.items == {}  # stopping the pool deleted its node
