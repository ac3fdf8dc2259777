"""The MCP server end to end: the official ``mcp`` SDK client over WebSocket (``homeskillet.mcp_ws``)
and Streamable HTTP, against uvicorn on a real port, a real runtime and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from websockets.exceptions import InvalidStatus

from homeskillet.auth import AuthSettings, mint_token
from homeskillet.config import HttpSettings
from homeskillet.ingress.mcp import mcp_app
from homeskillet.mcp_ws import websocket_client
from homeskillet.testing import echo_pool, start_runtime

SECRET = "mcp-test-secret-0123456789abcdef0123"
AUDIENCE = "homeskillet-mcp"
TOOLS = {"query", "quote", "reserve", "reservation", "release", "allocation_metrics", "pools"}


def token(tenant: str, **kw: Any) -> str:
    return mint_token(tenant=tenant, secret=SECRET, audience=AUDIENCE, **kw)


POOLS = [echo_pool("echo/standard"), echo_pool("echo/standard-dear", usd_per_mtok_in=5.0, usd_per_mtok_out=9.0),
         echo_pool("echo/h100", pool_class="dedicated", usd_per_hour=4.0, gpu_model="H100")]


@pytest.fixture
async def rt(nats_url: str):  # type: ignore[no-untyped-def]
    """The whole process as `homeskillet up --auth` builds it: the HTTP app (MCP mounted) on the runtime's loop."""
    auth = AuthSettings(enabled=True, secret=SECRET, audience=AUDIENCE)
    async with start_runtime(nats_url, POOLS, http=HttpSettings(listen="127.0.0.1:0"), auth=auth) as runtime:
        yield runtime


@pytest.fixture
def addr(rt) -> str:  # type: ignore[no-untyped-def]
    return str(rt.http.url).removeprefix("http://")


@asynccontextmanager
async def ws_session(addr: str, tok: str) -> AsyncIterator[ClientSession]:
    async with websocket_client(f"ws://{addr}/mcp/ws", token=tok) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(addr: str, tok: str) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {tok}"}) as client:
        async with streamable_http_client(f"http://{addr}/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def error_text(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)


# --- the SDK client over both transports -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_sdk_client_lists_tools_and_queries(rt, addr, transport) -> None:  # type: ignore[no-untyped-def]
    open_session = ws_session if transport == "ws" else http_session
    async with open_session(addr, token("acme")) as session:
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(t.output_schema and t.output_schema["type"] == "object" for t in listed.tools)
        quoted = await session.call_tool("quote", {"prompt": "What is a strike?"})
        assert not quoted.is_error, quoted.content
        frag = quoted.structured_content["fragments"][0]
        assert frag["winner"]["pool"] == "echo/standard" and frag["winner"]["why"]
        assert [b["pool"] for b in frag["alternatives"]] == ["echo/standard-dear"]
        assert quoted.structured_content["servable"] and quoted.structured_content["tenant"] == "acme"
        assert (await rt.ledger_report("acme")).spent_usd == {}  # a quote charges nothing
        # The SDK validates structured content against the tool's outputSchema.
        result = await session.call_tool("query", {"prompt": "What is a strike?"})
        assert not result.is_error, result.content
        out = result.structured_content
        assert out["text"] == "echo: What is a strike?"
        assert out["pools"] == ["echo/standard"] and out["kept"] is True
        assert out["fragments"][0]["step"] and out["fragments"][0]["kept"] is True
        assert out["cost_usd"] > 0 and json.loads(result.content[0].text) == out
    # The tenant came from the token: the ledger charged acme.
    report = await rt.ledger_report("acme")
    assert report.spent_usd == {"acme": pytest.approx(out["cost_usd"])}


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_reserve_metrics_and_release(addr, transport) -> None:  # type: ignore[no-untyped-def]
    open_session = ws_session if transport == "ws" else http_session
    async with open_session(addr, token("acme")) as session:
        result = await session.call_tool("reserve", {"gpu_model": "H100", "duration_s": 600})
        assert not result.is_error, result.content
        res = result.structured_content
        assert res["tenant"] == "acme" and res["pool"] == "echo/h100" and res["status"] == "active"
        rid = res["reservation_id"]
        ran = await session.call_tool("query", {"prompt": "hello", "reservation_id": rid})
        assert ran.structured_content["pools"] == ["echo/h100"]
        metrics = await session.call_tool("allocation_metrics", {"reservation_id": rid})
        assert not metrics.is_error and metrics.structured_content["allocation_id"]
        released = await session.call_tool("release", {"reservation_id": rid})
        assert released.structured_content["status"] == "released"


async def test_pools_tool_reads_the_live_quote_book(addr) -> None:  # type: ignore[no-untyped-def]
    async with ws_session(addr, token("acme")) as session:
        table = (await session.call_tool("pools", {})).structured_content["pools"]
    assert [row["pool"] for row in table] == ["echo/h100", "echo/standard", "echo/standard-dear"]
    assert all(row["expires_in_ms"] > 0 and row["offer"]["pool"] == row["pool"] for row in table)


# --- tenants -------------------------------------------------------------------------------------------


async def test_tenant_cannot_see_or_touch_another_tenants_reservation(addr) -> None:  # type: ignore[no-untyped-def]
    async with ws_session(addr, token("acme")) as a, http_session(addr, token("globex")) as b:
        rid = (await a.call_tool("reserve", {"gpu_model": "H100"})).structured_content["reservation_id"]
        for tool, args in [("reservation", {}), ("allocation_metrics", {}), ("release", {}),
                           ("query", {"prompt": "hi"})]:
            theirs = await b.call_tool(tool, {"reservation_id": rid, **args})
            unknown = await b.call_tool(tool, {"reservation_id": "no-such-id", **args})
            assert theirs.structured_content["status"] == 404 and error_text(theirs).startswith("not_found")
            # Exactly what an unknown id gets: nothing about acme's reservation leaks, not even that it exists.
            assert error_text(theirs).replace(rid, "ID") == error_text(unknown).replace("no-such-id", "ID")
            assert theirs.structured_content == {**unknown.structured_content,
                                                 "message": unknown.structured_content["message"].replace(
                                                     "no-such-id", rid)}
        # globex's attempts changed nothing.
        still = await a.call_tool("reservation", {"reservation_id": rid})
        assert still.structured_content["status"] == "active"


async def test_another_tenant_as_argument_is_refused(addr) -> None:  # type: ignore[no-untyped-def]
    async with ws_session(addr, token("acme")) as session:
        refused = await session.call_tool("reserve", {"gpu_model": "H100", "tenant": "globex"})
        own = await session.call_tool("reserve", {"gpu_model": "H100", "tenant": "acme"})
    assert refused.structured_content["status"] == 403 and refused.structured_content["term"] == "tenant"
    assert "names tenant 'globex' but the token's tenant is 'acme'" in error_text(refused)
    assert not own.is_error and own.structured_content["tenant"] == "acme"


async def test_a_query_only_token_cannot_reserve(addr) -> None:  # type: ignore[no-untyped-def]
    async with ws_session(addr, token("acme", scopes=["hs:query"])) as session:
        refused = await session.call_tool("reserve", {"gpu_model": "H100"})
        pools = await session.call_tool("pools", {})
    assert refused.is_error and refused.structured_content["code"] == "forbidden"
    assert not pools.is_error  # what the scope grants still works


async def test_http_session_is_bound_to_the_tenant_that_opened_it(addr) -> None:  # type: ignore[no-untyped-def]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        opened = await client.post("/mcp", json=init, headers={**accept, "Authorization": f"Bearer {token('acme')}"})
        assert opened.status_code == 200
        sid = opened.headers["mcp-session-id"]
        hijack = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                   headers={**accept, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-06-18",
                                            "Authorization": f"Bearer {token('globex')}"})
    assert hijack.status_code == 404


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["missing", "wrong-secret", "expired", "wrong-audience"])
async def test_a_bad_token_is_refused_on_both_transports(addr, bad) -> None:  # type: ignore[no-untyped-def]
    tok = {"missing": None,
           "wrong-secret": mint_token(tenant="acme", secret="another-secret-0123456789abcdef-0123", audience=AUDIENCE),
           "expired": token("acme", now=0.0),
           "wrong-audience": mint_token(tenant="acme", secret=SECRET, audience="someone-else")}[bad]
    with pytest.raises(InvalidStatus) as refused:
        async with websocket_client(f"ws://{addr}/mcp/ws", token=tok):
            pass
    assert refused.value.response.status_code == 401
    assert b"invalid_token" in refused.value.response.body
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{addr}/mcp", headers=headers,
                              json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "invalid_token" and r.json()["error_description"]


async def test_a_websocket_session_ends_when_its_token_expires(addr) -> None:  # type: ignore[no-untyped-def]
    # Accepted within the server's 30 s leeway, with about 2 s of it left.
    tok = token("acme", now=time.time() - 30.0, ttl_s=2.0)
    async with websockets.connect(f"ws://{addr}/mcp/ws", subprotocols=["mcp"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": f"Bearer {tok}"}) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] == 1  # served while the token holds
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "expired" in closed.value.rcvd.reason


async def test_websocket_without_the_mcp_subprotocol_is_refused(addr) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://{addr}/mcp/ws",
                                      additional_headers={"Authorization": f"Bearer {token('acme')}"}):
            pass
    assert refused.value.response.status_code == 400 and b"subprotocol" in refused.value.response.body


# --- the wire: malformed JSON-RPC gets JSON-RPC errors, and the connection keeps working ------------------


async def test_malformed_json_rpc_gets_errors_and_the_connection_keeps_working(addr) -> None:  # type: ignore[no-untyped-def]
    async with websockets.connect(f"ws://{addr}/mcp/ws", subprotocols=["mcp"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": f"Bearer {token('acme')}"}) as ws:
        assert ws.subprotocol == "mcp"

        async def exchange(frame: str) -> dict[str, Any]:
            await ws.send(frame)
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return reply

        assert (await exchange("{not json")) == {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32700, "message": "Parse error: the frame is not valid JSON"}}
        bad = await exchange('{"jsonrpc": "2.0", "id": 7}')
        assert bad["id"] == 7 and bad["error"]["code"] == -32600
        assert (await exchange('{"jsonrpc": "1.0", "id": "x", "method": "ping"}'))["error"]["code"] == -32600
        assert (await exchange('[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]'))["error"]["code"] == -32600
        assert (await exchange('"just a string"'))["error"]["code"] == -32600
        # Still working: the handshake, a tool list, an unknown method, an unknown tool, a tool error.
        init = await exchange(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}))
        assert init["id"] == 1 and init["result"]["serverInfo"]["name"] == "homeskillet"
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        listed = await exchange('{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
        assert {t["name"] for t in listed["result"]["tools"]} == TOOLS
        assert (await exchange('{"jsonrpc": "2.0", "id": 3, "method": "no/such"}'))["error"]["code"] == -32601
        unknown = await exchange(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                             "params": {"name": "nope", "arguments": {}}}))
        assert unknown["error"]["code"] == -32602 and "unknown tool 'nope'" in unknown["error"]["message"]
        typo = await exchange(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                          "params": {"name": "query", "arguments": {"promt": "hi"}}}))
        assert typo["result"]["isError"] is True and "'promt'" in typo["result"]["content"][0]["text"]
        answered = await exchange(json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                                              "params": {"name": "query", "arguments": {"prompt": "still here?"}}}))
        assert answered["result"]["structuredContent"]["text"] == "echo: still here?"
        # A binary frame ends the connection with 1003, as SEP-1288 says.
        await ws.send(b"\x00\x01")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_tool_errors_name_what_was_wrong(addr) -> None:  # type: ignore[no-untyped-def]
    async with ws_session(addr, token("acme")) as session:
        assert "neither 'prompt' nor 'messages'" in error_text(await session.call_tool("query", {}))
        assert "temperature" in error_text(await session.call_tool("query", {"prompt": "x", "temperature": 9}))
        wrong_type = error_text(await session.call_tool("reserve", {"count": "two"}))
        assert "count" in wrong_type and "int" in wrong_type
        with pytest.raises(MCPError) as unknown:
            await session.call_tool("nope", {})
        assert unknown.value.code == -32602


# --- standalone: only the MCP endpoints, uvicorn on this test's loop ------------------------------------


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """uvicorn on a free loopback port on this loop, where the runtime's NATS connection lives. The socket
    listens first, so a client may connect at once: it waits in the backlog until startup is done."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


async def test_mcp_app_alone_with_auth_off_uses_the_x_tenant_header(nats_url) -> None:  # type: ignore[no-untyped-def]
    async with start_runtime(nats_url, POOLS) as runtime, serving(mcp_app(runtime.gateway)) as a:
        async with websocket_client(f"ws://{a}/mcp/ws", headers={"X-Tenant": "initech"}) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out = (await session.call_tool("query", {"prompt": "no token needed"})).structured_content
        async with create_mcp_http_client() as client:  # no header: the default tenant
            async with streamable_http_client(f"http://{a}/mcp", http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    res = (await session.call_tool("reserve", {"gpu_model": "H100"})).structured_content
        report = await runtime.ledger_report()
    assert out["text"] == "echo: no token needed" and set(report.spent_usd) == {"initech"}
    assert res["tenant"] == "default"
