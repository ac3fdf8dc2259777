"""Replay over MCP: the ``query`` tool through the official SDK's ``ClientSession`` on ``/mcp/ws``
against the embedded stack's HTTP API; counts as over NATS, tenants carried, errors explicit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from homeskillet.errors import HomeskilletError
from homeskillet.replay.driver import replay
from homeskillet.replay.mcp_target import McpSender, ws_url
from homeskillet.replay.report import build_report, markdown
from homeskillet.replay.scenario import load_scenario, shorten
from homeskillet.replay.stack import LiveStack
from homeskillet.wire import Answer, ErrorReply, Query

ROOT = Path(__file__).parents[2]


def test_ws_url_is_derived_from_the_http_base():
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/mcp/ws"
    assert ws_url("https://hs.example/base/") == "wss://hs.example/base/mcp/ws"
    assert ws_url("ws://h:1/mcp/ws") == "ws://h:1/mcp/ws"
    with pytest.raises(HomeskilletError, match=r"http\(s\)://host:port"):
        ws_url("nats://127.0.0.1:4222")


async def test_replay_over_mcp_counts_as_over_nats_on_the_same_seed():
    # research-lab: 50 tenants with their own budgets, so a session per tenant is exercised.
    s = msgspec.structs.replace(shorten(load_scenario(ROOT / "scenarios/research-lab.toml")), duration_s=2.0)
    over_nats = build_report(await replay(s, target="nats"))
    over_mcp = build_report(await replay(s, target="mcp"))
    assert over_mcp.ledger.sent > 20 and over_mcp.ledger.balanced and over_mcp.ledger.lost == 0, markdown(over_mcp)
    assert over_mcp.ledger.sent == over_nats.ledger.sent  # the arrivals are the seed's, whatever the target
    assert [c.sent for c in over_mcp.covenants] == [c.sent for c in over_nats.covenants]
    # Answers and errors depend on live timing; on this short run both are (nearly) all answered.
    assert abs(over_mcp.ledger.errors - over_nats.ledger.errors) <= max(1, over_nats.ledger.sent // 50)
    assert over_mcp.allocation.n == over_mcp.ledger.answered
    assert all(c.ok for c in over_mcp.checks), markdown(over_mcp)


async def test_mcp_sender_reuses_a_bounded_pool_keeps_tenants_and_maps_tool_errors():
    s = shorten(load_scenario(ROOT / "scenarios/image-pipeline.toml"))
    c = s.classes[0]

    def ask(tenant: str, prompt: str, covenant: str = c.covenant) -> Query:
        return Query(tenant=tenant, covenant=covenant, overrides=c.overrides, max_tokens=16, prompt=prompt)

    async with LiveStack(s, http=True) as stack:
        assert stack.query_side is not None
        send = McpSender(stack.http_url, max_sessions=3, calls_per_session=2)
        try:
            await send.start(["acme"])
            assert send.open_sessions == 1
            replies = await asyncio.gather(*(send(ask("acme", f"why is sky {i} blue?"), 30.0) for i in range(12)))
            assert all(isinstance(r, Answer) and r.fragments and r.tenant == "acme" for r in replies), replies
            assert 2 <= send.opened and send.open_sessions <= 3  # grew under load, within the bound
            bad = await send(ask("acme", "hi", covenant="no-such-covenant"), 30.0)
            assert isinstance(bad, ErrorReply) and 400 <= bad.status < 500 and "no-such-covenant" in bad.message
            other = await send(ask("globex", "hi?"), 30.0)
            assert isinstance(other, Answer)
            assert len(send.sessions["globex"]) == 1  # a tenant of its own: its own session
        finally:
            await send.close()
        # The tenant reached the gateway through the session's X-Tenant header: the ledger charged it.
        report = await stack.query_side.ledger_report()
        assert report.spent_usd.get("acme", 0.0) > 0 and report.spent_usd.get("globex", 0.0) > 0


async def test_mcp_sender_refuses_a_dead_endpoint_clearly():
    send = McpSender("http://127.0.0.1:9")  # the discard port: nothing serves MCP there
    with pytest.raises(HomeskilletError, match=r"cannot open an MCP session at ws://127\.0\.0\.1:9/mcp/ws"):
        await send.start(["acme"])
    assert send.open_sessions == 0
