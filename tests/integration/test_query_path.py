"""The whole query path through a real nats-server: ingress, negotiation, strikes, fusion."""

from __future__ import annotations

import json

import msgspec
import nats
import pytest

from homeskillet.errors import BudgetExceeded, NoPoolError
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Answer, ErrorReply, Query, encode


async def request(url: str, subject: str, data: bytes, timeout: float = 10.0) -> nats.aio.msg.Msg:
    nc = await nats.connect(url)
    try:
        return await nc.request(subject, data, timeout=timeout)
    finally:
        await nc.close()


async def test_query_over_nats_is_answered_by_the_winning_pool(runtime, nats_url):
    msg = await request(nats_url, runtime.subjects.query, encode(Query(prompt="What is a strike?")))
    assert not (msg.headers or {}).get("Nats-Service-Error")
    answer = msgspec.json.decode(msg.data, type=Answer)
    assert answer.text == "echo: What is a strike?"
    assert [f.pool for f in answer.fragments] == ["echo/standard"]
    assert answer.covenant == "default" and answer.cost_usd > 0


async def test_multi_question_query_is_split_struck_in_parallel_and_fused_in_order(runtime):
    answer = await runtime.ask(prompt="What is a lease? Who pays for a strike? Why fuse?")
    assert [f.index for f in answer.fragments] == [0, 1, 2]
    assert len({f.strike_id for f in answer.fragments}) == 3
    lines = answer.text.splitlines()
    assert lines[0] == "1. What is a lease?" and lines[1] == "echo: What is a lease?"
    assert answer.text.index("Who pays") < answer.text.index("Why fuse")
    assert answer.cost_usd == pytest.approx(sum(f.cost_usd for f in answer.fragments))


async def test_service_is_discoverable_through_srv_ping_info_stats(runtime, nats_url):
    nc = await nats.connect(nats_url)
    try:
        await runtime.ask(prompt="warm up")
        ping = json.loads((await nc.request("$SRV.PING.homeskillet", b"", timeout=2)).data)
        assert ping["name"] == "homeskillet"
        info = json.loads((await nc.request(f"$SRV.INFO.homeskillet.{runtime.ingress.service.id}", b"",
                                            timeout=2)).data)
        assert runtime.subjects.query in [e["subject"] for e in info["endpoints"]]
        stats = json.loads((await nc.request(f"$SRV.STATS.homeskillet.{runtime.ingress.service.id}", b"",
                                             timeout=2)).data)
        assert stats["endpoints"][0]["num_requests"] >= 0
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("payload", "code", "needle"),
    [
        (b"{not json", "400", "not valid JSON"),
        (b'{"prompt": 5}', "400", "got `int` - at `$.prompt`"),
        (b'{"prompt": "hi", "covenant": "gold-plated"}', "404", "unknown covenant 'gold-plated'"),
        (b'{"prompt": "   "}', "400", "prompt is empty"),
        (b'{"messages": []}', "400", "neither 'prompt' nor 'messages'"),
        (b'{"prompt": "hi", "overrides": {"qos": {"priorty": 1}}}', "422", "unknown key 'qos.priorty'"),
        (json.dumps({"prompt": "x" * (10 * 1024 * 1024)}).encode(), "413", "limit is 1048576 bytes"),
    ],
)
async def test_malformed_requests_get_service_errors_and_the_service_keeps_answering(
    runtime, nats_url, payload, code, needle
):
    msg = await request(nats_url, runtime.subjects.query, payload)
    assert msg.headers["Nats-Service-Error-Code"] == code
    assert needle in msg.headers["Nats-Service-Error"]
    err = msgspec.json.decode(msg.data, type=ErrorReply)
    assert err.status == int(code)
    good = await request(nats_url, runtime.subjects.query, encode(Query(prompt="still there?")))
    assert msgspec.json.decode(good.data, type=Answer).text == "echo: still there?"
    report = await runtime.ledger_report()
    assert report.settlements == 1  # the bad request changed nothing


async def test_no_pool_can_meet_the_covenant_names_the_unmet_term(nats_url):
    small = echo_pool("echo/small", "dedicated", vram_mb=16384)
    async with start_runtime(nats_url, [small]) as rt:
        with pytest.raises(NoPoolError) as info:
            await rt.ask(prompt="big", model="qwen-70b", overrides={"fallback": {"steps": ["fail"]}})
        assert "resources.min_vram_mb" in info.value.message
        assert "offers 16384 MB, needs 81920 MB" in info.value.message
        msg = await request(nats_url, rt.subjects.query,
                            encode(Query(prompt="big", model="qwen-70b", overrides={"fallback": {"steps": ["fail"]}})))
        assert msg.headers["Nats-Service-Error-Code"] == "503"
        assert msgspec.json.decode(msg.data, type=ErrorReply).term == "resources.min_vram_mb"


async def test_contract_net_round_awards_a_lease_and_strikes_under_it(nats_url):
    pools = [echo_pool("echo/a", "premium", usd_per_mtok_out=2.0), echo_pool("echo/b", "premium", usd_per_mtok_out=1.0)]
    async with start_runtime(nats_url, pools) as rt:
        answer = await rt.ask(prompt="negotiate", covenant="qwen-14b", overrides={"negotiation": "cfp"})
        assert answer.fragments[0].pool == "echo/b"  # the cheaper bid won the call for proposals
        assert rt.hosts["echo/a"].agent.state.leases == {}  # the loser holds nothing


async def test_fallback_steps_and_degradation_to_the_local_model(nats_url):
    pools = [echo_pool("echo/std", "standard", gpu_model="L4"),
             echo_pool("echo/local", "local", models=["smollm2-135m"])]
    async with start_runtime(nats_url, pools) as rt:
        answer = await rt.ask(prompt="classify", covenant="mistral-7b",
                              overrides={"resources": {"gpu_models": ["A100"]}})
        f = answer.fragments[0]
        assert (f.pool, f.step, f.model, f.degraded) == ("echo/local", "local", "smollm2-135m", True)
        assert any("resources.gpu_models" in t for t in f.tried)


async def test_tenant_budget_holds_under_concurrency_and_never_overspends(nats_url):
    import asyncio

    pool = echo_pool(usd_per_mtok_in=0, usd_per_mtok_out=1000.0, options={"delay_ms": 300})
    async with start_runtime(nats_url, [pool]) as rt:
        over = {"cost": {"tenant_budget_usd": 0.5, "max_usd_per_request": 1.0}, "max_tokens": 200}  # holds $0.20
        results = await asyncio.gather(*(rt.ask(prompt="one two three", tenant="acme", overrides=over)
                                         for _ in range(5)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BudgetExceeded)]
        answered = [r for r in results if not isinstance(r, BaseException)]
        assert len(answered) == 2 and len(refused) == 3
        assert all(r.term == "cost.tenant_budget_usd" for r in refused)
        report = await rt.ledger_report("acme")
        assert 0 < report.spent_usd["acme"] <= 0.5 and report.held_usd == {}


async def test_queue_step_parks_until_capacity_arrives(nats_url):
    async with start_runtime(nats_url, []) as rt:
        import asyncio

        covenant = {"resources": {"pool_class": "premium"},
                    "fallback": {"steps": ["queue"], "queue_max_wait_ms": 10000}}
        pending = asyncio.create_task(rt.ask(prompt="wait for me", overrides=covenant))
        async def parked() -> None:
            while not rt.orchestrator.parked:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(parked(), 5)  # parked before any premium pool exists
        await rt.add_pool(echo_pool("echo/late", "premium"))
        answer = await asyncio.wait_for(pending, 10)
        assert answer.fragments[0].pool == "echo/late"
        assert answer.fragments[0].step == "queue→premium"
