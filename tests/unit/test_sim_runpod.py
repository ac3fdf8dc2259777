"""The RunPod simulator over GraphQL, REST v1 and the pod proxy, in-process through httpx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.runpod import NO_STOCK, GraphQLError, RunPodState, SimClock, create_app, parse

KEY = {"Authorization": "Bearer sim-key"}
RTX4090, L40S = "NVIDIA GeForce RTX 4090", "NVIDIA L40S"
CHAT = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Explain covenants"}]}
PRICES = """query GpuTypes($lowestPriceInput: GpuLowestPriceInput, $gpuTypesInput: GpuTypeFilter) {
  gpuTypes(input: $gpuTypesInput) {
    id displayName memoryInGb maxGpuCount securePrice communityPrice secureSpotPrice communitySpotPrice
    lowestPrice(input: $lowestPriceInput) {
      minimumBidPrice uninterruptablePrice minVcpu minMemory stockStatus compliance countryCode } } }"""
POD = """query Pod($podId: String!) {
  pod(input: {podId: $podId}) { id desiredStatus costPerHr gpuCount lastStatusChange uptimeSeconds
    runtime { ports { ip isIpPublic privatePort publicPort type } } machine { gpuDisplayName } } }"""
TERMINATE = 'mutation { podTerminate(input: {podId: "ID"}) }'
RENT_SPOT = """mutation Rent($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id desiredStatus costPerHr podType bidPerGpu gpuCount } }"""


def deploy_mutation(gpu: str = RTX4090, count: int = 1, extra: str = "") -> str:
    """The document runpod-python's generate_pod_deployment_mutation builds: inline object literal."""
    return f"""
    mutation {{
      podFindAndDeployOnDemand(
        input: {{
          name: "strike-1", imageName: "vllm/vllm-openai:latest", cloudType: ALL, startSsh: true,
          gpuTypeId: "{gpu}", supportPublicIp: true, gpuCount: {count}, dataCenterId: null,
          ports: "8000/http,22/tcp", env: [{{ key: "HF_TOKEN", value: "x" }}] {extra}
        }}
      ) {{
        id imageName env machineId machine {{ podHostId }} desiredStatus costPerHr gpuCount
        runtime {{ uptimeInSeconds }}
      }}
    }}
    """


class Sim:
    def __init__(self, seed: int = 0, stock: dict[str, dict[str, int]] | None = None, **faults: Any) -> None:
        capacity = faults.pop("capacity", 8)
        extra: dict[str, Any] = {"stock": stock} if stock else {}
        plan = FaultPlan(**faults)
        config = SimConfig(seed=seed, time_scale=0, faults=plan, extra=extra, capacity=capacity)
        self.app = create_app(config)
        self.state: RunPodState = self.app.state.sim
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://sim",
                                      headers=KEY)

    @property
    def clock(self) -> SimClock:
        assert isinstance(self.state.clock, SimClock)
        return self.state.clock

    async def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        r = await self.http.post("/graphql", json={"query": query, "variables": variables})
        assert r.status_code == 200, r.text  # GraphQL refusals are still HTTP 200
        body: dict[str, Any] = r.json()
        return body

    async def deploy(self, gpu: str = RTX4090, count: int = 1) -> dict[str, Any]:
        body = await self.gql(deploy_mutation(gpu, count))
        assert "errors" not in body, body
        pod: dict[str, Any] = body["data"]["podFindAndDeployOnDemand"]
        return pod

    async def pod(self, pod_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = (await self.gql(POD, podId=pod_id))["data"]["pod"]
        return found

    async def chat(self, pod_id: str, port: int = 8000) -> httpx.Response:
        return await self.http.post(f"/proxy/{pod_id}-{port}/v1/chat/completions", json=CHAT)


def refused(body: dict[str, Any], field: str) -> str:
    assert body["data"] is None and len(body["errors"]) == 1, body
    assert body["errors"][0]["path"] == [field]
    message: str = body["errors"][0]["message"]
    return message


# -- discovery and prices -----------------------------------------------------------------------
async def test_gpu_types_and_lowest_price_per_gpu_with_stock_status() -> None:
    sim = Sim(stock={RTX4090: {"EU-RO-1": 16}})
    body = await sim.gql(PRICES, gpuTypesInput={"id": RTX4090},
                         lowestPriceInput={"gpuCount": 2, "secureCloud": True, "dataCenterId": "EU-RO-1"})
    (gpu,) = body["data"]["gpuTypes"]
    assert gpu["memoryInGb"] == 24 and gpu["displayName"] == "RTX 4090"  # VRAM per GPU
    low = gpu["lowestPrice"]
    assert low["uninterruptablePrice"] == gpu["securePrice"] == 0.69  # per GPU, not x gpuCount
    assert low["minimumBidPrice"] == gpu["secureSpotPrice"] and low["stockStatus"] == "High"
    assert low["countryCode"] == "RO"
    assert set(low) == {"minimumBidPrice", "uninterruptablePrice", "minVcpu", "minMemory", "stockStatus",
                        "compliance", "countryCode"}


async def test_stock_status_is_null_when_nothing_fits() -> None:
    sim = Sim(stock={L40S: {dc: 1 for dc in ("EU-RO-1", "US-TX-3", "CA-MTL-1", "EU-SE-1")}})
    q = """{ gpuTypes(input: {id: "NVIDIA L40S"}) {
             one: lowestPrice(input: {gpuCount: 1, secureCloud: true}) { stockStatus }
             two: lowestPrice(input: {gpuCount: 2, secureCloud: true}) {
               stockStatus uninterruptablePrice } } }"""
    (gpu,) = (await sim.gql(q))["data"]["gpuTypes"]
    assert gpu["one"]["stockStatus"] == "Low" and gpu["two"]["stockStatus"] is None
    assert gpu["two"]["uninterruptablePrice"] == 0.86


async def test_discovery_query_and_unrequested_fields_are_left_out() -> None:
    body = await Sim().gql("query { countryCodes dataCenters { id listed } gpuTypes { id memoryInGb } }")
    data = body["data"]
    assert "RO" in data["countryCodes"] and {"id": "EU-RO-1", "listed": True} in data["dataCenters"]
    assert all(set(g) == {"id", "memoryInGb"} for g in data["gpuTypes"]) and len(data["gpuTypes"]) == 6


# -- create, readiness, refusals ----------------------------------------------------------------
async def test_on_demand_pod_runtime_is_null_until_the_container_is_up() -> None:
    sim = Sim(slow_ready_s=300)
    pod = await sim.deploy(count=2)
    assert pod["desiredStatus"] == "RUNNING" and pod["runtime"] is None and pod["env"] == ["HF_TOKEN=x"]
    assert pod["machine"]["podHostId"].startswith(pod["id"]) and pod["gpuCount"] == 2
    assert pod["costPerHr"] == pytest.approx(2 * sim.state.gpu_types[RTX4090].price(
        sim.state.pods[pod["id"]].dc.secure, spot=False))  # per-GPU price x gpuCount
    assert (await sim.chat(pod["id"])).status_code == 502
    sim.clock.advance(299)
    assert (await sim.pod(pod["id"]) or {})["runtime"] is None
    sim.clock.advance(1)
    seen = await sim.pod(pod["id"])
    assert seen is not None and seen["runtime"] is not None
    ports = {p["privatePort"]: p for p in seen["runtime"]["ports"]}
    assert ports[8000]["type"] == "http" and ports[22]["isIpPublic"] is True
    r = await sim.chat(pod["id"])
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert (await sim.chat(pod["id"], port=22)).status_code == 502  # the proxy forwards http ports only


async def test_stock_out_is_http_200_with_errors_and_null_data() -> None:
    sim = Sim(stock={L40S: dict.fromkeys(("EU-RO-1", "US-TX-3", "CA-MTL-1", "EU-SE-1", "US-OR-1", "EU-CZ-1",
                                          "AP-JP-1"), 0)})
    msg = refused(await sim.gql(deploy_mutation(L40S)), "podFindAndDeployOnDemand")
    assert msg == NO_STOCK
    assert not sim.state.pods


async def test_stale_stock_flips_at_create_time() -> None:
    only = {dc: 0 for dc in ("US-TX-3", "CA-MTL-1", "EU-SE-1", "US-OR-1", "EU-CZ-1", "AP-JP-1")}
    sim = Sim(stock={L40S: {**only, "EU-RO-1": 4}}, stale_offer_rate=1.0)
    before = await sim.gql(PRICES, gpuTypesInput={"id": L40S}, lowestPriceInput={"gpuCount": 1})
    assert before["data"]["gpuTypes"][0]["lowestPrice"]["stockStatus"] == "Medium"
    assert refused(await sim.gql(deploy_mutation(L40S)), "podFindAndDeployOnDemand") == NO_STOCK
    after = await sim.gql(PRICES, gpuTypesInput={"id": L40S}, lowestPriceInput={"gpuCount": 1})
    assert after["data"]["gpuTypes"][0]["lowestPrice"]["stockStatus"] is None


async def test_refusals_capacity_and_validation() -> None:
    assert refused(await Sim(refuse_rate=1.0).gql(deploy_mutation()), "podFindAndDeployOnDemand") == NO_STOCK
    sim = Sim(capacity=1)
    await sim.deploy()
    assert refused(await sim.gql(deploy_mutation()), "podFindAndDeployOnDemand") == NO_STOCK
    field = "podFindAndDeployOnDemand"
    assert "No GPU type" in refused(await sim.gql(deploy_mutation("NVIDIA B9000")), field)
    assert "gpuCount" in refused(await sim.gql(deploy_mutation(count=0)), field)


async def test_half_created_pod_is_left_exited_and_must_be_terminated() -> None:
    sim = Sim(half_created_rate=1.0)
    assert refused(await sim.gql(deploy_mutation(extra=", volumeInGb: 720")), "podFindAndDeployOnDemand")
    pods = (await sim.gql("{ myself { pods { id desiredStatus } } }"))["data"]["myself"]["pods"]
    assert [p["desiredStatus"] for p in pods] == ["EXITED"]
    sim.clock.advance(3600)
    assert sim.state.total_cost() == pytest.approx(720 * 0.20 / 720)  # the volume still bills
    body = await sim.gql(TERMINATE.replace("ID", pods[0]["id"]))
    assert body == {"data": {"podTerminate": None}}
    assert await sim.pod(pods[0]["id"]) is None


# -- spot pods ----------------------------------------------------------------------------------
async def test_interruptible_bid_per_gpu_and_bid_too_low() -> None:
    sim = Sim()
    spec = {"name": "s", "imageName": "vllm/vllm-openai:latest", "gpuTypeId": RTX4090, "gpuCount": 2,
            "cloudType": "COMMUNITY"}
    low = await sim.gql(RENT_SPOT, input={**spec, "bidPerGpu": 0.01})
    assert "below the current minimum bid" in refused(low, "podRentInterruptable")
    pod = (await sim.gql(RENT_SPOT, input={**spec, "bidPerGpu": 0.30}))["data"]["podRentInterruptable"]
    assert pod["podType"] == "INTERRUPTABLE" and pod["bidPerGpu"] == 0.30
    assert pod["costPerHr"] == pytest.approx(0.60)  # bids are per GPU


async def test_preempted_spot_pod_goes_exited_and_the_floor_rises() -> None:
    sim = Sim()
    spec = {"imageName": "i", "gpuTypeId": RTX4090, "cloudType": "SECURE", "bidPerGpu": 0.40,
            "ports": "8000/http"}
    pod_id = (await sim.gql(RENT_SPOT, input=spec))["data"]["podRentInterruptable"]["id"]
    r = await sim.http.post(f"/_sim/pods/{pod_id}/preempt")
    assert r.status_code == 200 and r.json()["counters"]["preempted"] == 1
    seen = await sim.pod(pod_id)
    assert seen is not None and seen["desiredStatus"] == "EXITED" and seen["runtime"] is None
    assert "outbid" in seen["lastStatusChange"] and (await sim.chat(pod_id)).status_code == 502
    prices = await sim.gql(PRICES, gpuTypesInput={"id": RTX4090}, lowestPriceInput={"secureCloud": True})
    assert prices["data"]["gpuTypes"][0]["lowestPrice"]["minimumBidPrice"] > 0.40
    resume = 'mutation { podBidResume(input: {podId: "%s", bidPerGpu: %s, gpuCount: 1}) { desiredStatus } }'
    assert "below" in refused(await sim.gql(resume % (pod_id, 0.40)), "podBidResume")
    assert (await sim.gql(resume % (pod_id, 0.9)))["data"]["podBidResume"]["desiredStatus"] == "RUNNING"


async def test_preemption_mid_inference_is_a_502_and_exits_the_pod() -> None:
    sim = Sim(preempt_rate=1.0)
    spot = (await sim.gql(RENT_SPOT, input={"imageName": "i", "gpuTypeId": RTX4090, "bidPerGpu": 1.0,
                                            "ports": "8000/http"}))["data"]["podRentInterruptable"]["id"]
    on_demand = (await sim.deploy())["id"]
    assert (await sim.chat(spot)).status_code == 502
    assert (await sim.pod(spot) or {})["desiredStatus"] == "EXITED"
    assert (await sim.chat(on_demand)).status_code == 200


async def test_stop_resume_terminate_and_unknown_pod() -> None:
    sim = Sim()
    pod_id = (await sim.deploy())["id"]
    stop = 'mutation { podStop(input: {podId: "ID"}) { id desiredStatus } }'
    stopped = (await sim.gql(stop.replace("ID", pod_id)))["data"]["podStop"]
    assert stopped == {"id": pod_id, "desiredStatus": "EXITED"}
    resume = 'mutation { podResume(input: {podId: "ID", gpuCount: 1}) { desiredStatus } }'
    res = await sim.gql(resume.replace("ID", pod_id))
    assert res["data"]["podResume"]["desiredStatus"] == "RUNNING"
    assert "not found" in refused(await sim.gql(stop.replace("ID", "nope")), "podStop")
    await sim.gql(TERMINATE.replace("ID", pod_id))
    assert await sim.pod(pod_id) is None and not sim.state.pods


async def test_billing_is_per_gpu_per_second() -> None:
    sim = Sim()
    pod = await sim.deploy(count=2)
    sim.clock.advance(1800)
    disk = 10 * 0.10 / 720
    assert sim.state.total_cost() == pytest.approx((pod["costPerHr"] + disk) / 2)


# -- GraphQL envelope, auth, faults --------------------------------------------------------------
async def test_bad_documents_are_400_and_keys_are_checked() -> None:
    sim = Sim()
    for query in ("{ bogus }", "query {", "{ pod(input: {podId: 1}) { ...F } }", "subscription { x }"):
        r = await sim.http.post("/graphql", json={"query": query})
        assert r.status_code == 400 and r.json()["errors"][0]["message"], query
    assert (await sim.http.post("/graphql", content=b"not json")).status_code == 400
    anon = httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim")
    r = await anon.post("/graphql", json={"query": "{ countryCodes }"})
    assert r.status_code == 401
    # runpod-python puts the key in the query string
    r = await anon.post("/graphql?api_key=sim-key", json={"query": "{ countryCodes }"})
    assert r.status_code == 200
    assert (await anon.get("/v1/pods", headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_rate_limit_and_outage() -> None:
    r = await Sim(rate_limit_rate=1.0).http.post("/graphql", json={"query": "{ countryCodes }"})
    assert r.status_code == 429 and r.json()["errors"]
    r = await Sim(outage=True).http.get("/v1/pods")
    assert r.status_code == 503 and r.json()["status"] == 503


def test_parser_reads_variables_defaults_aliases_and_operation_names() -> None:
    doc = """# comment
    query A($n: Int = 3, $ids: [String!]) {
      a: gpuTypes(input: {ids: $ids, n: $n, s: \"\"\"blk\"\"\"}) { id } }
    mutation B { podStop(input: {podId: "x"}) { id } }"""
    op = parse(doc, {"ids": ["g"]}, "A")
    (field,) = op.fields
    assert (op.kind, field.key, field.name) == ("query", "a", "gpuTypes")
    assert field.args == {"input": {"ids": ["g"], "n": 3, "s": "blk"}}
    assert parse(doc, operation_name="B").kind == "mutation"
    with pytest.raises(GraphQLError):
        parse(doc)


# -- REST v1 -------------------------------------------------------------------------------------
async def test_rest_v1_lifecycle_and_deprecation_headers() -> None:
    sim = Sim(slow_ready_s=60)
    body = {"name": "strike-1", "imageName": "vllm/vllm-openai:latest",
            "gpuTypeIds": ["NVIDIA B9000", RTX4090], "gpuCount": 1, "ports": ["8000/http", "22/tcp"],
            "env": {"K": "V"}, "minRAMPerGPU": 8}
    r = await sim.http.post("/v1/pods", json={**body, "gpuTypeIds": [RTX4090]})
    assert r.status_code == 201 and r.headers["sunset"].startswith("Sun, 15 Nov 2026")
    assert r.headers["deprecation"]
    pod = r.json()
    assert pod["desiredStatus"] == "RUNNING" and pod["publicIp"] is None and pod["gpu"]["id"] == RTX4090
    assert pod["costPerHr"] == pod["gpu"]["securePrice"] and pod["env"] == {"K": "V"}
    sim.clock.advance(60)
    got = (await sim.http.get(f"/v1/pods/{pod['id']}")).json()
    assert got["publicIp"] and got["portMappings"]["22"] > 0
    assert [p["id"] for p in (await sim.http.get("/v1/pods")).json()] == [pod["id"]]
    assert (await sim.http.post(f"/v1/pods/{pod['id']}/stop")).json()["desiredStatus"] == "EXITED"
    assert (await sim.http.post(f"/v1/pods/{pod['id']}/start")).json()["desiredStatus"] == "RUNNING"
    assert (await sim.http.delete(f"/v1/pods/{pod['id']}")).status_code == 204
    r = await sim.http.get(f"/v1/pods/{pod['id']}")
    assert r.status_code == 404 and r.json() == {"error": f'Pod "{pod["id"]}" not found.', "status": 404}
    r = await sim.http.post("/v1/pods", json=body)  # an unknown type among the ids is an error
    assert r.status_code == 400 and "B9000" in r.json()["error"]


async def test_rest_v1_spot_and_stock_out() -> None:
    sim = Sim(stock={L40S: {"EU-RO-1": 1}})
    r = await sim.http.post("/v1/pods", json={"imageName": "i", "gpuTypeIds": [L40S], "interruptible": True,
                                              "dataCenterIds": ["EU-RO-1"]})
    assert r.status_code == 201 and r.json()["interruptible"] is True
    assert r.json()["costPerHr"] == r.json()["gpu"]["secureSpotPrice"]
    on_demand = {"imageName": "i", "gpuTypeIds": [L40S], "dataCenterIds": ["EU-RO-1"]}
    r = await sim.http.post("/v1/pods", json=on_demand)
    assert r.status_code == 400 and r.json()["error"] == NO_STOCK


async def test_same_seed_same_responses() -> None:
    async def run(seed: int) -> list[Any]:
        sim = Sim(seed=seed, rate_limit_rate=0.2, preempt_rate=0.5, stale_offer_rate=0.2)
        out: list[Any] = []
        for gpu in (RTX4090, L40S, "NVIDIA RTX A6000", "NVIDIA H100 80GB HBM3"):
            r = await sim.http.post("/graphql", json={"query": RENT_SPOT, "variables": {"input": {
                "imageName": "i", "gpuTypeId": gpu, "bidPerGpu": 2.0, "ports": "8000/http"}}})
            out.append((r.status_code, r.json()))
            pod = (r.json().get("data") or {}).get("podRentInterruptable")
            if pod:
                out.append((await sim.chat(pod["id"])).json())
        out.append((await sim.http.get("/v1/pods")).json())
        return out

    first = await run(5)
    assert first == await run(5)
    assert first != await run(6)


# -- robustness ---------------------------------------------------------------------------------
_finite = st.floats(allow_nan=False, allow_infinity=False)
_scalar = st.none() | st.booleans() | st.integers() | _finite | st.text()
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                     max_leaves=12)
_keys = st.sampled_from(["imageName", "gpuTypeId", "gpuTypeIds", "gpuCount", "cloudType", "bidPerGpu",
                         "podId", "ports", "env", "dataCenterId", "dataCenterIds", "interruptible",
                         "volumeInGb"])
_input = st.dictionaries(_keys, _json | st.just(RTX4090), max_size=6)
_ops = st.sampled_from([RENT_SPOT.replace("PodRentInterruptableInput!", "X"), PRICES, POD,
                        "mutation M($input: X) { podFindAndDeployOnDemand(input: $input) { id } }",
                        "mutation M($input: X) { podResume(input: $input) { id } }",
                        "mutation M($input: X) { podTerminate(input: $input) }",
                        "query Q($input: X) { gpuTypes(input: $input) { lowestPrice(input: $input) { "
                        "stockStatus } } }"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_json | _input, query=_ops | st.text(max_size=80), variables=_json)
async def test_arbitrary_json_never_5xx(body: Any, query: str, variables: Any) -> None:
    sim = Sim()
    pod_id = (await sim.deploy())["id"]
    payloads = [  # the proxy first: a later payload may stop the pod, and then 502 is the right answer
        ("POST", f"/proxy/{pod_id}-8000/v1/chat/completions", body),
        ("POST", "/graphql", body), ("POST", "/v1/pods", body), ("POST", f"/v1/pods/{pod_id}/stop", body),
        ("POST", "/graphql", {"query": query, "variables": {"input": body, "podId": variables}}),
        ("POST", "/graphql", {"query": query, "variables": variables}), ("POST", "/_sim/clock/advance", body),
    ]
    for method, path, payload in payloads:
        r = await sim.http.request(method, path, json=payload)
        assert r.status_code < 500, (path, payload, r.text)
