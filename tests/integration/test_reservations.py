"""Reservations through a real nats-server: failover steps, cost ceiling, tenant isolation."""

from __future__ import annotations

import msgspec
import pytest

from homeskillet.errors import BadRequest, NoPoolError, NotFound
from homeskillet.reservations import plan
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Answer, Offer, Query, ReserveRequest, encode


def offer(pool: str, provider: str, usd_per_hour: float, **kw: object) -> Offer:
    base: dict[str, object] = {"pool_class": "standard", "models": ["*"], "gpu_model": "H100", "vram_mb": 81920,
                               "tflops": 990.0, "free_slots": 4}
    return Offer(pool=pool, provider=provider, usd_per_hour=usd_per_hour, **{**base, **kw})  # type: ignore[arg-type]


def test_plan_orders_by_price_and_load_and_checks_the_ceiling() -> None:
    offers = [
        offer("vastai/a", "vastai", 2.0, queue_depth=8, free_slots=0),  # cheap but loaded: 2.0 × 9
        offer("vastai/b", "vastai", 3.0),
        offer("runpod/c", "runpod", 2.5),
        offer("ionet/d", "ionet", 9.0),
        offer("mlx/local", "mlx", 0.0, pool_class="local", accelerator="cpu", gpu_model=""),
    ]
    steps = plan(ReserveRequest(provider="vastai", fallback_providers=["runpod", "ionet"], max_cost_per_hr=5.0),
                 offers)
    assert [s.label for s in steps] == ["vastai", "runpod", "ionet", "local"]
    assert [o.pool for o in steps[0].pools] == ["vastai/b", "vastai/a"]
    assert [o.pool for o in steps[1].pools] == ["runpod/c"]
    assert steps[2].pools == [] and "over max_cost_per_hr $5.00" in steps[2].passed[0]
    assert [o.pool for o in steps[3].pools] == ["mlx/local"]


def test_plan_gpu_model_and_preemptible_terms() -> None:
    offers = [offer("vastai/spot", "vastai", 1.0, preemptible=True), offer("vastai/a100", "vastai", 1.5,
                                                                             gpu_model="A100")]
    steps = plan(ReserveRequest(gpu_model="h100"), offers)
    assert steps[0].pools == []
    assert any("preemptible" in p for p in steps[0].passed) and any("not h100" in p for p in steps[0].passed)
    assert [o.pool for o in plan(ReserveRequest(gpu_model="h100", preemptible=True), offers)[0].pools] == [
        "vastai/spot"]


@pytest.fixture
async def rt(nats_url: str):  # type: ignore[no-untyped-def]
    pools = [echo_pool("echo/h100", usd_per_hour=4.0, gpu_model="H100"),
             echo_pool("echo/l4", usd_per_hour=0.8, gpu_model="L4", vram_mb=24576)]
    async with start_runtime(nats_url, pools) as runtime:
        yield runtime


async def test_reserve_infer_release_and_tenant_isolation(rt) -> None:  # type: ignore[no-untyped-def]
    gw = rt.gateway
    res = await gw.reserve(ReserveRequest(gpu_model="H100", tenant="acme", duration_s=600))
    assert res.pool == "echo/h100" and res.status == "active" and res.usd_per_hour == 4.0
    assert res.endpoint_path == f"/api/v1/inference/{res.reservation_id}"
    assert any("echo/l4" in t and "not H100" in t for t in res.tried)
    answer = await gw.infer_on(res.reservation_id, "acme", Query(prompt="hello there"))
    assert answer.fragments[0].pool == "echo/h100" and answer.text == "echo: hello there"
    over_nats = await rt.nc.request(res.endpoint_subject, encode(Query(prompt="by subject", tenant="acme")), timeout=10)
    assert msgspec.json.decode(over_nats.data, type=Answer).text == "echo: by subject"
    stranger = await rt.nc.request(res.endpoint_subject, encode(Query(prompt="x", tenant="other")), timeout=10)
    assert stranger.headers and stranger.headers["Nats-Service-Error-Code"] == "404"
    with pytest.raises(NotFound):
        await gw.reservation(res.reservation_id, "other-tenant")
    with pytest.raises(NotFound):
        await gw.infer_on(res.reservation_id, "other-tenant", Query(prompt="steal"))
    with pytest.raises(NotFound):
        await gw.release(res.reservation_id, "other-tenant")
    done = await gw.release(res.reservation_id, "acme")
    assert done.status == "released" and done.billed_usd is not None and done.billed_usd >= 0
    assert (await gw.release(res.reservation_id, "acme")).billed_usd == done.billed_usd  # idempotent
    with pytest.raises(BadRequest, match="released"):
        await gw.infer_on(res.reservation_id, "acme", Query(prompt="again"))


async def test_cost_ceiling_holds_at_every_step(rt) -> None:  # type: ignore[no-untyped-def]
    res = await rt.gateway.reserve(ReserveRequest(max_cost_per_hr=1.0, tenant="t"))
    assert res.pool == "echo/l4"
    with pytest.raises(NoPoolError) as info:
        await rt.gateway.reserve(ReserveRequest(gpu_model="H100", max_cost_per_hr=1.0, tenant="t"))
    assert "over max_cost_per_hr $1.00" in info.value.message
    with pytest.raises(BadRequest, match="duration_s"):
        await rt.gateway.reserve(ReserveRequest(duration_s=5))
    assert len(rt.reservations.table) == 1  # the refused ones left nothing behind


async def test_a_reservation_on_its_own_local_port(nats_url: str) -> None:
    import httpx
    from openai import AsyncOpenAI

    from homeskillet.config import HttpSettings

    pools = [echo_pool("echo/h100", usd_per_hour=4.0, gpu_model="H100")]
    http = HttpSettings(listen="127.0.0.1:0", reservation_ports=[20300, 20400])
    async with start_runtime(nats_url, pools, http=http) as rt:
        res = await rt.gateway.reserve(ReserveRequest(tenant="acme", local_port=True))
        assert res.local_port is not None and 20300 <= res.local_port <= 20400
        base = f"http://127.0.0.1:{res.local_port}"
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", default_headers={"X-Tenant": "acme"})
        done = await client.chat.completions.create(model="gemma-2b", messages=[{"role": "user", "content": "hi"}])
        assert done.choices[0].message.content == "echo: hi"
        async with httpx.AsyncClient(base_url=base) as h:
            ok = await h.post("/api/v1/inference", json={"prompt": "pinned"}, headers={"X-Tenant": "acme"})
            assert ok.status_code == 200 and ok.json()["fragments"][0]["pool"] == "echo/h100"
            other = await h.post("/api/v1/inference", json={"prompt": "x"}, headers={"X-Tenant": "globex"})
            assert other.status_code == 404  # another tenant's reservation does not exist for it
        await rt.gateway.release(res.reservation_id, "acme")
        async with httpx.AsyncClient(base_url=base) as h:
            with pytest.raises(httpx.ConnectError):
                await h.post("/api/v1/inference", json={"prompt": "after"})  # the port closed with the release


async def test_local_port_needs_the_http_api(rt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest, match="needs the HTTP API"):
        await rt.gateway.reserve(ReserveRequest(local_port=True))
    assert rt.reservations.table == {}
