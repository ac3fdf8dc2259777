"""The Vast.ai simulator, driven in-process over httpx exactly as a connector would drive Vast."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.vastai import Offer, SimClock, VastState, create_app, default_offers
from homeskillet.sims.vastai.state import DEFAULT_EPOCH

KEY = {"Authorization": "Bearer sim-key"}
VLLM = {"image": "vllm/vllm-openai:latest", "disk": 40, "label": "strike-1", "env": {"-p 8000:8000": "1"}}
CHAT = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Explain covenants"}]}
# Every Offer field provider-apis.md section 1 lists as used by clients.
OFFER_FIELDS = """id machine_id host_id gpu_name num_gpus gpu_ram gpu_total_ram gpu_frac gpu_mem_bw bw_nvlink
compute_cap total_flops flops_per_dphtotal cpu_cores cpu_cores_effective cpu_ram cpu_ghz disk_space disk_bw
inet_up inet_down inet_up_cost inet_down_cost dph_base dph_total min_bid storage_cost discounted_dph_total
reliability reliability2 score dlperf dlperf_per_dphtotal cuda_max_good driver_version geolocation datacenter
hosting_type
verification static_ip direct_port_count duration rentable rented""".split()
SMALL_MARKET = [
    {"id": 101, "gpu_name": "RTX 4090", "gpu_ram": 24564, "dph_base": 0.40, "min_bid": 0.20,
     "storage_cost": 0.1, "geolocation": "Dallas, US", "cpu_ram": 64000, "total_flops": 82.6},
    {"id": 102, "gpu_name": "H100 SXM", "num_gpus": 8, "gpu_ram": 81559, "dph_base": 18.0, "min_bid": 9.0,
     "storage_cost": 0.2, "geolocation": "Frankfurt, DE", "cpu_ram": 1_031_000, "total_flops": 535.2},
    {"id": 103, "gpu_name": "RTX 3090", "gpu_ram": 24576, "dph_base": 0.15, "min_bid": 0.08,
     "storage_cost": 0.05, "geolocation": "PL", "cpu_ram": 32000, "total_flops": 35.6, "verified": False,
     "verification": "unverified"},
]


class Sim:
    def __init__(self, seed: int = 0, offers: list[dict[str, Any]] | None = None, **faults: Any) -> None:
        extra: dict[str, Any] = {"offers": offers} if offers is not None else {}
        for knob in ("boot_s", "oci_error_rate"):
            if knob in faults:
                extra[knob] = faults.pop(knob)
        capacity = faults.pop("capacity", 8)
        plan = FaultPlan(**faults)
        config = SimConfig(seed=seed, time_scale=0, faults=plan, extra=extra, capacity=capacity)
        self.app = create_app(config)
        self.state: VastState = self.app.state.sim
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://sim")

    @property
    def clock(self) -> SimClock:
        assert isinstance(self.state.clock, SimClock)
        return self.state.clock

    async def search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        r = await self.http.post("/api/v0/bundles/", json=query)
        assert r.status_code == 200, r.text
        offers: list[dict[str, Any]] = r.json()["offers"]
        return offers

    async def rent(self, offer_id: int, **body: Any) -> httpx.Response:
        return await self.http.put(f"/api/v0/asks/{offer_id}/", json={**VLLM, **body}, headers=KEY)

    async def rent_ok(self, offer_id: int, **body: Any) -> int:
        r = await self.rent(offer_id, **body)
        assert r.status_code == 200 and r.json()["success"] is True, r.text
        new_id: int = r.json()["new_contract"]
        return new_id

    async def show(self, instance_id: int) -> dict[str, Any] | None:
        r = await self.http.get(f"/api/v0/instances/{instance_id}/", params={"owner": "me"}, headers=KEY)
        assert r.status_code == 200, r.text
        inst: dict[str, Any] | None = r.json()["instances"]
        return inst

    async def chat(self, instance_id: int) -> httpx.Response:
        return await self.http.post(f"/instance/{instance_id}/v1/chat/completions", json=CHAT)


def _fail(r: httpx.Response, status: int, error: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["error"] == error and body["msg"]
    msg: str = body["msg"]
    return msg


# -- the market ---------------------------------------------------------------------------------
async def test_default_market_is_seeded_with_every_documented_field_in_vast_units() -> None:
    offers = await Sim().search({"limit": 100})
    assert len(offers) == 20
    assert {o["gpu_name"] for o in offers} == {"RTX 4090", "A100 PCIE", "H100 SXM", "RTX 3090", "L40S"}
    for o in offers:
        assert set(OFFER_FIELDS) <= set(o), set(OFFER_FIELDS) - set(o)
        assert o["gpu_ram"] > 20_000 and o["cpu_ram"] > 30_000  # MB, not GB
        assert o["gpu_total_ram"] == o["gpu_ram"] * o["num_gpus"]
        city_cc = o["geolocation"].rsplit(", ", 1)[-1]
        assert len(city_cc) == 2 and city_cc.isupper()
    h100 = next(o for o in offers if o["gpu_name"] == "H100 SXM")
    assert h100["total_flops"] == pytest.approx(66.9 * h100["num_gpus"], rel=1e-3)  # TFLOPs summed over GPUs
    scores = [o["score"] for o in offers]
    assert scores == sorted(scores, reverse=True)  # default order: score desc
    assert default_offers(7) == default_offers(7) and default_offers(7) != default_offers(8)


async def test_search_operators_on_mb_fields_aliases_and_country_codes() -> None:
    sim = Sim(offers=SMALL_MARKET)
    assert [o["id"] for o in await sim.search({"gpu_ram": {"gte": 40_000}})] == [102]
    assert [o["id"] for o in await sim.search({"gpu_ram": {"lt": 24570}})] == [101]
    assert {o["id"] for o in await sim.search({"cpu_ram": {"lte": 64_000}})} == {101, 103}
    assert {o["id"] for o in await sim.search({"gpu_name": {"in": ["RTX 4090", "RTX 3090"]}})} == {101, 103}
    assert [o["id"] for o in await sim.search({"gpu_name": {"notin": ["RTX 4090", "RTX 3090"]}})] == [102]
    assert {o["id"] for o in await sim.search({"num_gpus": {"neq": 8}})} == {101, 103}
    assert [o["id"] for o in await sim.search({"geolocation": {"in": ["US", "CA"]}})] == [101]
    assert [o["id"] for o in await sim.search({"geolocation": {"eq": "PL"}})] == [103]
    fast = await sim.search({"verified": {"eq": True}, "total_flops": {"gt": 100}})
    assert [o["id"] for o in fast] == [102]
    assert [o["id"] for o in await sim.search({"id": {"eq": "103"}})] == [103]  # dstack sends ids as strings
    cheap = await sim.search({"dph": {"lte": 0.5}, "order": [["dph_total", "asc"]], "allocated_storage": 72})
    assert [o["id"] for o in cheap] == [103, 101]
    assert cheap[1]["dph_total"] == pytest.approx(0.40 + 72 * 0.1 / 720)  # $/h plus storage $/GB/month
    bid = await sim.search({"type": "bid", "id": {"eq": 101}, "allocated_storage": 0})
    assert bid[0]["dph_total"] == pytest.approx(0.20)
    assert len(await sim.search({"limit": 2})) == 2


async def test_search_is_public_and_search_asks_selects_columns() -> None:
    sim = Sim(offers=SMALL_MARKET)
    r = await sim.http.put("/api/v0/search/asks/", json={"select_cols": ["gpu_name", "dph_total"],
                                                         "q": {"gpu_name": {"eq": "L40S"}}})
    assert r.status_code == 200 and r.json() == {"offers": []}
    body = {"select_cols": ["gpu_name"], "q": {"id": {"eq": 101}}}
    r = await sim.http.put("/api/v0/search/asks/", json=body)
    assert r.json() == {"offers": [{"id": 101, "gpu_name": "RTX 4090"}]}


@pytest.mark.parametrize("query", [
    {"gpu_mem": {"gte": 1}}, {"gpu_ram": {"approx": 1}}, {"gpu_ram": 24000}, {"type": "spot"},
    {"gpu_name": {"lt": 3}}, {"gpu_name": {"in": "RTX 4090"}}, {"order": [["price", "asc"]]}, {"limit": -1},
])
async def test_bad_search_is_400_invalid_args_naming_the_problem(query: dict[str, Any]) -> None:
    r = await Sim().http.post("/api/v0/bundles/", json=query)
    assert _fail(r, 400, "invalid_args")


# -- renting and readiness ----------------------------------------------------------------------
async def test_on_demand_rental_becomes_running_when_the_clock_passes_readiness() -> None:
    sim = Sim(offers=SMALL_MARKET, slow_ready_s=90, boot_s=30)
    iid = await sim.rent_ok(101)
    inst = await sim.show(iid)
    assert inst is not None and inst["actual_status"] == "created" and inst["ports"] == {}
    assert inst["intended_status"] == inst["cur_state"] == "running" and inst["is_bid"] is False
    assert inst["dph_total"] == pytest.approx(0.40 + 40 * 0.1 / 720, abs=1e-6) and inst["gpu_ram"] == 24564
    assert inst["start_date"] == DEFAULT_EPOCH and inst["label"] == "strike-1"
    assert (await sim.chat(iid)).status_code == 502
    sim.clock.advance(119)
    assert (await sim.show(iid) or {})["actual_status"] == "created"
    sim.clock.advance(1)
    inst = await sim.show(iid)
    assert inst is not None and inst["actual_status"] == "running"
    assert set(inst["ports"]) == {"22/tcp", "8000/tcp"} and inst["ports"]["8000/tcp"][0]["HostPort"].isdigit()
    assert inst["public_ipaddr"] and inst["ssh_host"].endswith(".vast.ai") and inst["ssh_port"] > 0
    r = await sim.chat(iid)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert r.json()["choices"][0]["message"]["role"] == "assistant" and r.json()["usage"]["total_tokens"] > 0
    # the offer is taken while rented
    assert (await sim.search({"id": {"eq": 101}}))[0]["rented"] is True
    _fail(await sim.rent(101), 404, "no_such_ask")


async def test_openai_sdk_talks_to_the_instance_server() -> None:
    sim = Sim(offers=SMALL_MARKET)
    iid = await sim.rent_ok(101)
    client = openai.AsyncOpenAI(base_url=f"http://sim/instance/{iid}/v1", api_key="unused", max_retries=0,
                                http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app)))  # type: ignore[arg-type]
    out = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content and out.usage is not None


async def test_bid_rental_is_interruptible_and_billed_per_second_with_storage() -> None:
    sim = Sim(offers=SMALL_MARKET)
    iid = await sim.rent_ok(101, price=0.25, disk=72)
    inst = await sim.show(iid)
    assert inst is not None and inst["is_bid"] is True and inst["actual_status"] == "running"
    assert inst["dph_total"] == pytest.approx(0.25 + 72 * 0.1 / 720, abs=1e-6)
    sim.clock.advance(1800)
    assert sim.state.total_cost() == pytest.approx((0.25 + 72 * 0.1 / 720) / 2)


async def test_bid_below_min_bid_half_creates_a_stopped_instance_that_must_be_destroyed() -> None:
    sim = Sim(offers=SMALL_MARKET)
    iid = await sim.rent_ok(101, price=0.05, disk=720)  # below min_bid 0.20: still "success"
    inst = await sim.show(iid)
    assert inst is not None
    assert inst["cur_state"] == inst["intended_status"] == inst["next_state"] == "stopped"
    assert "min_bid" in inst["status_msg"] and (await sim.chat(iid)).status_code == 502
    sim.clock.advance(3600)
    assert sim.state.total_cost() == pytest.approx(720 * 0.1 / 720)  # storage keeps billing
    r = await sim.http.delete(f"/api/v0/instances/{iid}/", headers=KEY)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert await sim.show(iid) is None
    sim.clock.advance(3600)
    assert sim.state.total_cost() == pytest.approx(0.1)  # nothing accrues once destroyed
    _fail(await sim.http.delete(f"/api/v0/instances/{iid}/", headers=KEY), 404, "no_such_instance")


async def test_half_created_rate_leaves_stopped_on_demand_instances() -> None:
    sim = Sim(offers=SMALL_MARKET, half_created_rate=1.0)
    inst = await sim.show(await sim.rent_ok(102))
    assert inst is not None and inst["intended_status"] == "stopped" and inst["actual_status"] == "created"
    assert sim.state.counters["half_created"] == 1


async def test_stale_offer_is_gone_at_create_time() -> None:
    sim = Sim(offers=SMALL_MARKET, stale_offer_rate=1.0)
    assert "not available" in _fail(await sim.rent(101), 404, "no_such_ask")
    assert await sim.search({"id": {"eq": 101}}) == []
    _fail(await sim.rent(999), 404, "no_such_ask")


async def test_refusals_and_capacity() -> None:
    _fail(await Sim(offers=SMALL_MARKET, refuse_rate=1.0).rent(101), 404, "no_such_ask")
    sim = Sim(offers=SMALL_MARKET, capacity=1)
    await sim.rent_ok(101)
    _fail(await sim.rent(102), 404, "no_such_ask")


async def test_oci_error_never_becomes_running() -> None:
    sim = Sim(offers=SMALL_MARKET, oci_error_rate=1.0)
    iid = await sim.rent_ok(101)
    sim.clock.advance(3600)
    inst = await sim.show(iid)
    assert inst is not None and inst["actual_status"] == "created"
    assert ": OCI runtime create failed:" in inst["status_msg"]


# -- preemption, lifecycle, faults ---------------------------------------------------------------
async def test_outbid_stops_all_three_states_and_a_higher_bid_restarts() -> None:
    sim = Sim(offers=SMALL_MARKET, slow_ready_s=10)
    iid = await sim.rent_ok(101, price=0.25)
    sim.clock.advance(10)
    r = await sim.http.post(f"/_sim/instances/{iid}/outbid")
    assert r.status_code == 200
    inst = await sim.show(iid)
    assert inst is not None and inst["actual_status"] == "exited"
    assert inst["cur_state"] == inst["intended_status"] == inst["next_state"] == "stopped"
    assert inst["min_bid"] > 0.25 and (await sim.chat(iid)).status_code == 502
    _fail(await sim.http.put(f"/api/v0/instances/{iid}/", json={"state": "running"}, headers=KEY),
          400, "invalid_args")
    r = await sim.http.put(f"/api/v0/instances/bid_price/{iid}/", json={"client_id": "me", "price": 1.0},
                           headers=KEY)
    assert r.json() == {"success": True}
    assert (await sim.show(iid) or {})["intended_status"] == "running"
    sim.clock.advance(10)
    assert (await sim.chat(iid)).status_code == 200


async def test_preemption_mid_inference_drops_the_connection_and_stops_the_instance() -> None:
    sim = Sim(offers=SMALL_MARKET, preempt_rate=1.0)
    spot, on_demand = await sim.rent_ok(101, price=0.3), await sim.rent_ok(103)
    r = await sim.chat(spot)
    assert r.status_code == 502 and r.json()["error"]["type"] == "connection_error"
    assert (await sim.show(spot) or {})["cur_state"] == "stopped"
    assert (await sim.chat(on_demand)).status_code == 200  # only bids are interruptible


async def test_stop_start_relabel_and_listing() -> None:
    sim = Sim(offers=SMALL_MARKET)
    iid = await sim.rent_ok(101)
    r = await sim.http.put(f"/api/v0/instances/{iid}", json={"state": "stopped", "label": "x"}, headers=KEY)
    assert r.json() == {"success": True}
    inst = await sim.show(iid)
    assert inst is not None and inst["actual_status"] == "exited" and inst["label"] == "x"
    await sim.http.put(f"/api/v0/instances/{iid}/", json={"state": "running"}, headers=KEY)
    assert (await sim.show(iid) or {})["actual_status"] == "running"
    r = await sim.http.get("/api/v0/instances/", headers=KEY)
    assert [i["id"] for i in r.json()["instances"]] == [iid]
    r = await sim.http.get("/api/v1/instances/", params={"limit": 1}, headers=KEY)
    assert r.json()["total_instances"] == 1 and r.json()["next_token"] is None
    _fail(await sim.http.put("/api/v0/instances/5/", json={"state": "running"}, headers=KEY), 404,
          "no_such_instance")


async def test_auth_everywhere_but_search() -> None:
    sim = Sim(offers=SMALL_MARKET)
    _fail(await sim.http.put("/api/v0/asks/101/", json=VLLM), 401, "auth_error")
    wrong = {"Authorization": "Bearer nope"}
    _fail(await sim.http.get("/api/v0/instances/1/", headers=wrong), 401, "auth_error")
    r = await sim.http.put("/api/v0/asks/101/", json=VLLM, params={"api_key": "sim-key"})  # dstack's style
    assert r.json()["success"] is True


async def test_rate_limit_outage_and_timeout() -> None:
    r = await Sim(rate_limit_rate=1.0).http.post("/api/v0/bundles/", json={})
    assert r.status_code == 429 and "too frequent" in r.json()["detail"]
    _fail(await Sim(outage=True).http.post("/api/v0/bundles/", json={}), 503, "service_unavailable")
    _fail(await Sim(timeout_rate=1.0).http.post("/api/v0/bundles/", json={}), 504, "timeout")


async def test_same_seed_same_responses() -> None:
    async def run(seed: int) -> list[Any]:
        sim = Sim(seed=seed, rate_limit_rate=0.2, preempt_rate=0.5, stale_offer_rate=0.2)
        out: list[Any] = []
        offers = await sim.search({"order": [["dph_total", "asc"]]})
        for offer in offers[:5]:
            r = await sim.rent(offer["id"], price=offer["min_bid"] * 1.5)
            out.append((r.status_code, r.json()))
            if r.status_code == 200:
                iid = r.json()["new_contract"]
                shown = await sim.http.get(f"/api/v0/instances/{iid}/", headers=KEY)
                out.append((shown.status_code, shown.json(), (await sim.chat(iid)).json()))
        return [offers, out]

    first = await run(3)
    assert first == await run(3)
    assert first != await run(4)


# -- robustness ---------------------------------------------------------------------------------
_finite = st.floats(allow_nan=False, allow_infinity=False)
_scalar = st.none() | st.booleans() | st.integers() | _finite | st.text()
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                     max_leaves=12)
_field = st.sampled_from([*Offer.__struct_fields__, "dph", "order", "type", "limit", "allocated_storage"])
_op = st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "in", "notin"])
_ops = st.dictionaries(_op, _json, max_size=3)
_query = st.dictionaries(_field, _ops | _json, max_size=4)
_create = st.fixed_dictionaries({}, optional={k: _json for k in ("image", "disk", "price", "env", "label")})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_json | _query | _create, target=st.sampled_from([
    ("POST", "/api/v0/bundles/"), ("PUT", "/api/v0/search/asks/"), ("PUT", "/api/v0/asks/101/"),
    ("PUT", "/api/v0/instances/{iid}/"), ("PUT", "/api/v0/instances/bid_price/{iid}/"),
    ("POST", "/instance/{iid}/v1/chat/completions"), ("POST", "/_sim/clock/advance"),
]))
async def test_arbitrary_json_never_5xx(body: Any, target: tuple[str, str]) -> None:
    sim = Sim(offers=SMALL_MARKET)
    iid = await sim.rent_ok(103, price=0.1)
    method, path = target
    as_q = path.endswith("search/asks/") and isinstance(body, dict) and body.get("q") is None
    wrapped = {"q": body} if as_q else body
    for payload in (body, wrapped):
        r = await sim.http.request(method, path.format(iid=iid), json=payload, headers=KEY)
        assert r.status_code < 500, r.text
