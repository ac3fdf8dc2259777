"""The NATS ingress with plain nats-py (no Homeskillet client code): hs.query, hs.quote, hs.reserve,
service discovery ($SRV.PING / INFO) and service error headers for bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    pools = [echo_pool(), echo_pool("echo/cheap", usd_per_mtok_in=0.01, usd_per_mtok_out=0.01),
             echo_pool("echo/tiny", vram_mb=1024), echo_pool("echo/h100", usd_per_hour=4.0, gpu_model="H100")]
    async with start_runtime(nats_url, pools) as runtime:
        yield runtime


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_query_quote_reserve(rt: Runtime, nc: NATS) -> None:
    p = rt.settings.prefix
    msg = await nc.request(f"{p}.query", json.dumps({"prompt": "hello over nats", "model": "mistral-7b",
                                                     "tenant": "acme"}).encode(), timeout=10)
    answer = json.loads(msg.data)
    assert answer["kind"] == "answer" and answer["text"] == "echo: hello over nats" and answer["tenant"] == "acme"

    msg = await nc.request(f"{p}.quote", json.dumps({"prompt": "What is a pool? What is a strike?",
                                                     "model": "mistral-7b"}).encode(), timeout=10)
    quote = json.loads(msg.data)
    assert quote["kind"] == "quote_reply" and quote["servable"] is True and len(quote["fragments"]) == 2
    frag = quote["fragments"][0]
    assert frag["winner"]["pool"] == "echo/cheap" and "cheapest" in frag["winner"]["why"]
    assert {b["pool"] for b in frag["alternatives"]} == {"echo/standard", "echo/h100"}
    assert [b["score"] for b in frag["alternatives"]] == sorted(b["score"] for b in frag["alternatives"])
    assert {"pool": "echo/tiny", "term": "resources.min_vram_mb"} == \
        {k: frag["refused"][0][k] for k in ("pool", "term")}
    assert quote["total_usd"] == pytest.approx(sum(f["winner"]["price_usd"] for f in quote["fragments"]))
    report = await rt.ledger_report()
    assert report.settlements == 1  # the quote charged nothing and struck nothing

    msg = await nc.request(f"{p}.reserve", json.dumps({"gpu_model": "H100", "duration_s": 600,
                                                       "tenant": "acme"}).encode(), timeout=10)
    res = json.loads(msg.data)
    assert res["kind"] == "reservation" and res["pool"] == "echo/h100" and res["status"] == "active"


async def test_discovery_and_errors(rt: Runtime, nc: NATS) -> None:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.PING.homeskillet", b"", reply=inbox)
    await nc.publish("$SRV.INFO.homeskillet", b"", reply=inbox)
    p = rt.settings.prefix
    mine = {f"{p}.query", f"{p}.quote", f"{p}.reserve"}
    # Every homeskillet service on this shared server answers; ours is the one with our subjects.
    ping, subjects = None, set()
    while ping is None or not mine <= subjects:
        reply = json.loads((await sub.next_msg(timeout=5)).data)
        if reply["type"] == "io.nats.micro.v1.ping_response":
            ping = reply
        elif reply["type"] == "io.nats.micro.v1.info_response":
            theirs = {e["subject"] for e in reply["endpoints"]}
            subjects = theirs if theirs & mine else subjects
    assert ping["name"] == "homeskillet"
    assert mine <= subjects

    for subject, body, status in ((f"{p}.quote", b"{nope", "400"), (f"{p}.reserve", b'{"count": 0}', "400"),
                                  (f"{p}.quote", b'{"prompt": "x", "model": "nope"}', "404"),
                                  (f"{p}.reserve", b'{"duration_s": "long"}', "400")):
        msg = await nc.request(subject, body, timeout=10)
        assert msg.headers is not None and msg.headers["Nats-Service-Error-Code"] == status, (subject, body)
        assert json.loads(msg.data)["kind"] == "error"
