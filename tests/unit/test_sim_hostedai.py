"""The hosted.ai simulator over HTTP, in-process: tokens, allocations, inference, faults, billing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.hostedai import HostedAISim, create_app

T0 = 1_700_000_000.0
ALLOC = {
    "pool_id": "standard-us-east",
    "requirements": {"min_tflops": 5.0, "min_vram_mb": 2048, "max_vram_mb": 4096},
    "duration_seconds": 300,
    "preemptible": True,
    "metadata": {"tenant_id": "acme", "workload_id": "w1"},
}
INFER = {"model": "gemma-2b-it", "prompt": "Explain quantum computing", "max_tokens": 500, "temperature": 0.7}


class Clock:
    """An injectable clock the test advances instead of sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sim:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.clock = Clock()
        self.app = create_app(config or SimConfig(time_scale=0), clock=self.clock)
        self.state: HostedAISim = self.app.state.sim
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://sim")
        self.headers: dict[str, str] = {}

    async def login(self) -> str:
        r = await self.http.post("/api/v1/auth/token", json={"api_key": "sim-key"})
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        return str(r.json()["access_token"])

    async def call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return await self.http.request(method, f"/api/v1{path}", json=json, headers=self.headers)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    s = Sim()
    await s.login()
    yield s
    await s.http.aclose()


def _err(r: httpx.Response) -> str:
    body = r.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return str(body["error"]["code"])


async def test_token_flow_and_expiry() -> None:
    s = Sim(SimConfig(time_scale=0, extra={"token_ttl_s": 5}))
    r = await s.http.post("/api/v1/auth/token", json={"api_key": "wrong"})
    assert r.status_code == 401 and _err(r) == "invalid_api_key"
    assert (await s.call("GET", "/pools")).status_code == 401  # no token at all
    token = await s.login()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == int(T0) + 5
    assert (await s.call("GET", "/pools")).status_code == 200
    s.clock.advance(5)
    r = await s.call("GET", "/pools")
    assert r.status_code == 401 and _err(r) == "token_expired"
    assert r.headers["www-authenticate"].startswith("Bearer")
    s.headers = {"Authorization": "Bearer not.a.jwt"}
    r = await s.call("GET", "/pools")
    assert r.status_code == 401 and _err(r) == "invalid_token"
    await s.login()  # refresh
    assert (await s.call("GET", "/pools")).status_code == 200


async def test_allocation_lifecycle_metrics_and_billing(sim: Sim) -> None:
    pools = {p["id"]: p for p in (await sim.call("GET", "/pools")).json()["data"]}
    assert set(pools) == {f"{t}-us-east" for t in ("standard", "premium", "preemptible", "dedicated")}
    assert pools["standard-us-east"]["available"] == 8
    r = await sim.call("POST", "/allocations", ALLOC)
    assert r.status_code == 201, r.text
    alloc = r.json()
    assert alloc["status"] == "active" and alloc["pool_id"] == "standard-us-east"
    assert alloc["vram_mb"] == 4096 and alloc["tflops"] == 30.0 and alloc["preemptible"] is True
    assert alloc["metadata"] == ALLOC["metadata"] and alloc["expires_at"] > alloc["created_at"]
    assert (await sim.call("GET", "/pools")).json()["data"][0]["available"] == 7
    latencies = []
    for _ in range(3):
        r = await sim.call("POST", f"/inference/{alloc['id']}", INFER)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["allocation_id"] == alloc["id"] and out["text"]
        usage = out["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        latencies.append(out["latency_ms"])
    sim.clock.advance(90)
    m = (await sim.call("GET", f"/allocations/{alloc['id']}/metrics")).json()
    assert m["inference_count"] == 3
    assert m["average_latency_ms"] == pytest.approx(sum(latencies) / 3, abs=1e-2)
    assert 0 < m["gpu_utilization"] <= 1 and 0 < m["memory_used_mb"] <= 4096
    r = await sim.call("DELETE", f"/allocations/{alloc['id']}")
    assert r.status_code == 200 and r.json()["status"] == "released"
    assert r.json()["billed_usd"] == pytest.approx(90 * 0.80 / 3600)
    assert sim.state.billed_usd["acme"] == pytest.approx(90 * 0.80 / 3600)
    for method, path in [("DELETE", ""), ("GET", "/metrics")]:
        assert (await sim.call(method, f"/allocations/{alloc['id']}{path}")).status_code == 404
    r = await sim.call("POST", f"/inference/{alloc['id']}", INFER)
    assert r.status_code == 404 and _err(r) == "allocation_not_found"


async def test_capacity_refusal_requirements_and_expiry() -> None:
    pool = {"id": "p-1", "tier": "standard", "region": "eu", "capacity": 1, "vram_mb": 8192, "tflops": 10.0,
            "price_per_hour": 3.6}  # fmt: skip
    s = Sim(SimConfig(time_scale=0, extra={"pools": [pool]}))
    await s.login()
    body = {"pool_id": "p-1", "duration_seconds": 60}
    first = await s.call("POST", "/allocations", body)
    assert first.status_code == 201
    r = await s.call("POST", "/allocations", body)
    assert r.status_code == 409 and _err(r) == "insufficient_capacity"
    for bad in ({"min_tflops": 11}, {"min_vram_mb": 9000}, {"min_vram_mb": 4000, "max_vram_mb": 2000}):
        r = await s.call("POST", "/allocations", {"pool_id": "p-1", "requirements": bad})
        assert r.status_code == 422 and _err(r) == "unsatisfiable_requirements"
    r = await s.call("POST", "/allocations", {"pool_id": "nope"})
    assert r.status_code == 404 and _err(r) == "pool_not_found"
    r = await s.call("POST", "/allocations", {"pool_id": "p-1", "requirements": {"min_vram_gb": 1}})
    assert r.status_code == 422 and _err(r) == "invalid_request"
    s.clock.advance(61)  # the first allocation runs out: billed for its 60 s, its vGPU is free again
    r = await s.call("GET", f"/allocations/{first.json()['id']}")
    assert r.json()["status"] == "expired" and r.json()["billed_usd"] == pytest.approx(0.06)
    assert (await s.call("POST", f"/inference/{first.json()['id']}", INFER)).status_code == 410
    assert (await s.call("POST", "/allocations", body)).status_code == 201


async def test_preemptible_pool_needs_consent(sim: Sim) -> None:
    r = await sim.call("POST", "/allocations", {"pool_id": "preemptible-us-east", "preemptible": False})
    assert r.status_code == 422
    r = await sim.call("POST", "/allocations", {"pool_id": "preemptible-us-east", "preemptible": True})
    assert r.status_code == 201 and r.json()["price_per_hour"] == 0.25


async def _preemption_run(seed: int) -> list[tuple[Any, ...]]:
    s = Sim(SimConfig(seed=seed, time_scale=0, faults=FaultPlan(preempt_rate=0.3)))
    await s.login()
    trace: list[tuple[Any, ...]] = []
    alloc = (await s.call("POST", "/allocations", ALLOC)).json()
    for _ in range(20):
        s.clock.advance(7)
        r = await s.call("POST", f"/inference/{alloc['id']}", INFER)
        if r.status_code == 200:
            trace.append(("ok", r.json()["latency_ms"]))
            continue
        assert r.status_code == 410 and _err(r) == "preempted"
        gone = (await s.call("GET", f"/allocations/{alloc['id']}")).json()
        assert gone["status"] == "preempted"
        created = s.state.leases[alloc["id"]].created_s
        assert gone["billed_usd"] == pytest.approx(math.ceil(s.clock() - created) * 0.80 / 3600)
        r = await s.call("POST", f"/inference/{alloc['id']}", INFER)
        assert r.status_code == 410 and _err(r) == "preempted"  # stays gone
        trace.append(("preempted", alloc["id"], gone["billed_usd"]))
        alloc = (await s.call("POST", "/allocations", ALLOC)).json()
    trace.append(("billed", dict(s.state.billed_usd)))
    await s.http.aclose()
    return trace


async def test_preemption_mid_inference_is_deterministic() -> None:
    first, second = await _preemption_run(7), await _preemption_run(7)
    assert first == second
    assert any(t[0] == "preempted" for t in first) and any(t[0] == "ok" for t in first)
    assert first != await _preemption_run(8)


async def test_non_preemptible_allocation_is_never_evicted() -> None:
    s = Sim(SimConfig(time_scale=0, faults=FaultPlan(preempt_rate=1.0)))
    await s.login()
    alloc = (await s.call("POST", "/allocations", {"pool_id": "premium-us-east"})).json()
    for _ in range(5):
        assert (await s.call("POST", f"/inference/{alloc['id']}", INFER)).status_code == 200


@pytest.mark.parametrize(
    ("faults", "status", "code"),
    [
        (FaultPlan(outage=True), 503, "service_unavailable"),
        (FaultPlan(unavailable_rate=1.0), 503, "service_unavailable"),
        (FaultPlan(rate_limit_rate=1.0), 429, "rate_limited"),
        (FaultPlan(timeout_rate=1.0, timeout_s=12.0), 504, "gateway_timeout"),
    ],
)
async def test_faults(faults: FaultPlan, status: int, code: str) -> None:
    s = Sim(SimConfig(time_scale=0, faults=faults))
    r = await s.http.post("/api/v1/auth/token", json={"api_key": "sim-key"})
    assert r.status_code == status and _err(r) == code
    if status == 429:
        assert r.headers["retry-after"] == "1"
    if status == 504:
        assert s.state.slept_ms == 12_000  # the hang was modelled even though nothing slept


async def test_refusal_and_slow_allocation_under_load() -> None:
    s = Sim(SimConfig(time_scale=0, capacity=4, faults=FaultPlan(slow_ready_s=2.0)))
    await s.login()
    waits = []
    for _ in range(4):
        before = s.state.slept_ms
        assert (await s.call("POST", "/allocations", {"pool_id": "dedicated-us-east"})).status_code == 201
        waits.append(s.state.slept_ms - before)
    assert waits == [500, 1000, 1500, 2000]  # the fuller the pool, the slower the allocation
    s = Sim(SimConfig(time_scale=0, faults=FaultPlan(refuse_rate=1.0)))
    await s.login()
    r = await s.call("POST", "/allocations", ALLOC)
    assert r.status_code == 409 and _err(r) == "insufficient_capacity"


async def test_real_time_scale_sleeps_the_modelled_latency() -> None:
    s = Sim(SimConfig(time_scale=0.001, extra={}))
    await s.login()
    alloc = (await s.call("POST", "/allocations", ALLOC)).json()
    r = await asyncio.wait_for(s.call("POST", f"/inference/{alloc['id']}", INFER), timeout=5)
    assert r.status_code == 200 and s.state.slept_ms == pytest.approx(r.json()["latency_ms"], abs=1e-2)


async def test_unknown_path_uses_the_envelope(sim: Sim) -> None:
    r = await sim.call("GET", "/nowhere")
    assert r.status_code == 404 and _err(r) == "not_found"
    r = await sim.call("PUT", "/allocations")
    assert r.status_code == 405 and _err(r) == "method_not_allowed"


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_BODIES = {  # per path: mostly well-formed bodies, with edge values, so the handlers run deep
    "/auth/token": st.fixed_dictionaries({"api_key": st.sampled_from(["sim-key", "wrong", ""])}),
    "/allocations": st.fixed_dictionaries(
        {"pool_id": st.sampled_from(["standard-us-east", "preemptible-us-east", "dedicated-us-east", "x"])},
        optional={
            "requirements": st.fixed_dictionaries(
                {},
                optional={
                    "min_tflops": st.floats(-1, 400),
                    "min_vram_mb": st.integers(-1, 100_000),
                    "max_vram_mb": st.integers(0, 100_000),
                },
            ),
            "duration_seconds": st.integers(-10, 10**5) | st.integers(),
            "preemptible": st.booleans(),
            "metadata": st.fixed_dictionaries({}, optional={"tenant_id": st.text(max_size=8)}),
        },
    ),
    "/inference/{alloc}": st.fixed_dictionaries(
        {"model": st.text(max_size=20), "prompt": st.text(max_size=200)},
        optional={"max_tokens": st.integers(-5, 40_000) | st.integers(), "temperature": st.floats(-0.5, 2.5)},
    ),
}


def _body(path: str) -> st.SearchStrategy[Any]:
    """A well-formed body, the same with one field replaced or added as junk, or any JSON at all."""
    valid = _BODIES.get(path, _BODIES["/inference/{alloc}"])
    spoiled = st.tuples(valid, st.text(max_size=12), _json).map(lambda t: {**t[0], t[1]: t[2]})
    return valid | spoiled | _json


async def _post(path: str, **kwargs: Any) -> httpx.Response:
    s = Sim()
    await s.login()
    alloc = (await s.call("POST", "/allocations", ALLOC)).json()
    r = await s.http.post("/api/v1" + path.format(alloc=alloc["id"]), headers=s.headers, **kwargs)
    await s.http.aclose()
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        _err(r)
    return r


_PATHS = [*_BODIES, "/inference/alloc-0"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path_body=st.sampled_from(_PATHS).flatmap(lambda p: st.tuples(st.just(p), _body(p))))
async def test_arbitrary_post_bodies_never_5xx(path_body: tuple[str, Any]) -> None:
    await _post(path_body[0], json=path_body[1])


@settings(max_examples=50, deadline=None)
@given(path=st.sampled_from(_PATHS), raw=st.binary(max_size=40))
async def test_arbitrary_post_bytes_never_5xx(path: str, raw: bytes) -> None:
    await _post(path, content=raw)


async def test_idempotency_key_replays_the_first_create(sim: Sim) -> None:
    headers = {**sim.headers, "Idempotency-Key": "k-1"}
    first = await sim.http.post("/api/v1/allocations", json=ALLOC, headers=headers)
    again = await sim.http.post("/api/v1/allocations", json=ALLOC, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and sim.state.counters["allocations_created"] == 1
    other = await sim.call("POST", "/allocations", ALLOC)  # no key: a new allocation
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
