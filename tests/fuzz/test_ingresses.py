"""Fuzz each ingress end to end (a share of the inputs): NATS ``hs.query`` / ``hs.quote`` /
``hs.reserve`` on a real nats-server, the HTTP API in-process (``/v1`` and ``/api/v1``), and MCP
tool calls through the official client. Every reply is an answer or a 4xx naming the field, its
headers under 1 KB; a 4xx leaves the books, budgets, rate-limit windows, reservations and kept
results exactly as they were.

Each input also goes through the shared decode + validation first: one it refuses must be refused
by the ingress too (a 4xx, nothing changed). One it admits may be answered, refused later for a
reason of state (402 budget, 404 reservation, 429 rate), or found unservable by the pools there
are (503 ``no_pool``, 504 ``deadline_exceeded``: the covenant's declared outcome, counted apart);
any other 5xx is a failure. An admitted input may be served for as long as its covenant allows (a
queue step waits for capacity): each reply is awaited a few seconds, one still pending then is
checked when it ends, and inputs still waiting at the end of the session are counted, not failed."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from fuzzkit import (
    E2E_INPUTS,
    MAX_PROMPT_BYTES,
    TALLY,
    Pure,
    Row,
    World,
    batch,
    chat_body,
    fuzz_settings,
    query_body,
    record,
    reserve_body,
    texts,
    tool_call,
)
from hypothesis import given
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from homeskillet.ingress.mcp_tools import McpTools
from homeskillet.wire import ErrorReply

WAIT_S = 5.0  # how long one reply is awaited before it is checked later instead
# status, headers, the field an error names and its code ("" for an answer)
Reply = tuple[int, dict[str, str], str, str]
PENDING: list[tuple[str, bool, asyncio.Future[Reply]]] = []
UNSERVABLE = {(503, "no_pool"), (504, "deadline_exceeded")}


def verdict(decoder: str, admitted: bool, reply: Reply, before: Any, after: Any, seconds: float) -> None:
    status, headers, term, code = reply
    why = ""
    if (status, code) in UNSERVABLE and admitted:
        record(decoder, "unservable", seconds)
        return
    if status >= 500:
        why = f"status {status} ({code})"
    elif not admitted and status < 400:
        why = f"status {status} for an input the shared validation refuses"
    elif status >= 400:
        if not term:
            why = f"a {status} naming no field"
        elif any(len(k) + len(v.encode()) > 1024 for k, v in headers.items()):
            why = "a header over 1 KB"
        elif before != after:
            why = f"a {status} changed state: {before} -> {after}"
    record(decoder, "crash" if why else "rejected" if status >= 400 else "accepted", seconds, why)
    assert not why, f"{decoder}: {why}"


def run_one(world: World, decoder: str, admitted: bool, send: Callable[[], Awaitable[Reply]]) -> None:
    async def one() -> tuple[Reply | None, Any, Any, float, asyncio.Future[Reply]]:
        t0 = asyncio.get_running_loop().time()
        before = await world.state()
        fut: asyncio.Future[Reply] = asyncio.ensure_future(send())
        done, _ = await asyncio.wait({fut}, timeout=WAIT_S)
        if not done:
            return None, before, before, 0.0, fut
        reply = fut.result()
        after = await world.state() if 400 <= reply[0] < 500 else before
        return reply, before, after, asyncio.get_running_loop().time() - t0, fut

    reply, before, after, seconds, fut = world.run(one())
    if reply is None:
        PENDING.append((decoder, admitted, fut))
        return
    verdict(decoder, admitted, reply, before, after, seconds)


# --- NATS ----------------------------------------------------------------------------------------


def nats_send(world: World, subject: str, data: bytes) -> Callable[[], Awaitable[Reply]]:
    async def send() -> Reply:
        msg = await world.nc.request(subject, data, timeout=3700)
        headers = dict(msg.headers or {})
        status = int(headers.get("Nats-Service-Error-Code", "200"))
        if status < 400:
            return status, headers, "", ""
        err = msgspec.json.decode(msg.data, type=ErrorReply)
        return status, headers, err.term or "", err.code
    return send


@fuzz_settings(E2E_INPUTS)
@given(inputs=batch(query_body))
@pytest.mark.parametrize("endpoint", ["query", "quote"])
def test_nats_query_and_quote(world: World, pure: Pure, endpoint: str, inputs: list[bytes]) -> None:
    subject = world.rt.subjects.query if endpoint == "query" else f"{world.rt.subjects.prefix}.quote"
    for data in inputs:
        if len(data) >= MAX_PROMPT_BYTES:
            continue  # a larger message is refused by the NATS client itself (max_payload)
        admitted = pure.admits(lambda: pure.query(data))  # noqa: B023 - called at once
        run_one(world, f"NATS hs.{endpoint} end to end", admitted, nats_send(world, subject, data))


@fuzz_settings(E2E_INPUTS)
@given(inputs=batch(reserve_body))
def test_nats_reserve(world: World, pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        if len(data) >= MAX_PROMPT_BYTES:
            continue
        admitted = pure.admits(lambda: pure.reserve(data))  # noqa: B023 - called at once
        run_one(world, "NATS hs.reserve end to end", admitted,
                nats_send(world, f"{world.rt.subjects.prefix}.reserve", data))


# --- HTTP ----------------------------------------------------------------------------------------


def http_send(world: World, method: str, path: str, data: bytes | None) -> Callable[[], Awaitable[Reply]]:
    async def send() -> Reply:
        r = await world.http.request(method, path, content=data, headers={"content-type": "application/json"})
        if r.status_code < 400:
            return r.status_code, dict(r.headers), "", ""
        doc = r.json()
        err = doc["error"] if "error" in doc else doc
        term = err.get("param" if "error" in doc else "term") or ""
        return r.status_code, dict(r.headers), term, err.get("code") or ""
    return send


@fuzz_settings(E2E_INPUTS)
@given(inputs=batch(chat_body))
def test_http_v1(world: World, pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        admitted = pure.admits(lambda: pure.chat(data))  # noqa: B023 - called at once
        run_one(world, "HTTP /v1 end to end", admitted, http_send(world, "POST", "/v1/chat/completions", data))


# An id with a "/" (even escaped: the router matches the decoded path) or only dots names another
# path, which the router answers with a 307 to the path without the trailing slash or a 404.
ids = texts.filter(lambda t: "/" not in t and t.strip(".") != "")
API_ROUTES = [("POST", "/api/v1/query", "query"), ("POST", "/api/v1/quote", "query"),
              ("POST", "/api/v1/compute/reserve", "reserve"), ("POST", "/api/v1/allocations", "reserve"),
              ("POST", "/api/v1/inference/{id}", "query"), ("GET", "/api/v1/results/{id}", ""),
              ("GET", "/api/v1/allocations/{id}", ""), ("DELETE", "/api/v1/allocations/{id}", ""),
              ("GET", "/api/v1/usage", "")]


@fuzz_settings(E2E_INPUTS)
@given(inputs=batch(st.tuples(st.sampled_from(API_ROUTES), query_body, reserve_body,
                              ids)))
def test_http_api_v1(world: World, pure: Pure, inputs: list[tuple[tuple[str, str, str], bytes, bytes, str]]) -> None:
    for (method, path, kind), query, reserve, ident in inputs:
        data = {"query": query, "reserve": reserve}.get(kind)
        check = {"query": lambda: pure.query(query, "body"), "reserve": lambda: pure.reserve(reserve)}.get(kind)  # noqa: B023
        admitted = check is None or pure.admits(check)
        path = path.replace("{id}", urllib.parse.quote(ident, safe=""))
        run_one(world, "HTTP /api/v1 end to end", admitted, http_send(world, method, path, data))


# --- MCP -----------------------------------------------------------------------------------------


def mcp_send(world: World, name: str, args: Any) -> Callable[[], Awaitable[Reply]]:
    async def send() -> Reply:
        try:
            result = await world.mcp.call_tool(name, args if isinstance(args, dict) else {"arguments": args})
        except MCPError as exc:  # JSON-RPC: an unknown tool or malformed params, the client's fault
            return (400 if exc.error.code in (-32602, -32600) else 500), {}, "name", str(exc.error.code)
        if not result.is_error:
            return 200, {}, "", ""
        err = result.structured_content or {}
        return int(err.get("status", 500)), {}, str(err.get("term") or ""), str(err.get("code") or "")
    return send


@fuzz_settings(E2E_INPUTS)
@given(inputs=batch(tool_call))
def test_mcp_tools(world: World, pure: Pure, inputs: list[tuple[str, Any]]) -> None:
    if not _tools:
        _tools.append(McpTools(world.rt.gateway))
    for name, args in inputs:
        admitted = pure.admits(lambda: pure.tool(_tools[0], name, args))  # noqa: B023 - called at once
        run_one(world, "MCP tools end to end", admitted, mcp_send(world, name, args))


_tools: list[McpTools] = []


def test_pending_replies_end_well(world: World) -> None:
    """The replies that took longer than WAIT_S (admitted queries waiting in a queue step): each
    that has ended was an answer or a 4xx; those still waiting are counted (the tally's note)."""
    async def settle() -> list[tuple[str, bool, Reply | None]]:
        if PENDING:
            await asyncio.wait([f for _, _, f in PENDING], timeout=30)
        return [(d, a, f.result() if f.done() else None) for d, a, f in PENDING]

    for decoder, admitted, reply in world.run(settle()):
        if reply is not None:
            verdict(decoder, admitted, reply, None, None, 0.0)
    still = sum(1 for _, _, f in PENDING if not f.done())
    if still:
        TALLY.setdefault("(admitted, still queued at the end)", Row()).inputs += still
