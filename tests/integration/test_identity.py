"""One identity rule on every ingress, with auth on, against a real nats-server: NATS requests carry
``Authorization: Bearer <JWT>`` in a header and are checked like HTTP's and MCP's; a tenant named in
a payload, body, header, query string or tool argument that is not the token's is refused with 403
naming the place, the same way on NATS, HTTP and MCP; a NATS client cannot spend another tenant's
budget; ``GET /api/v1/allocations`` lists only the caller's own; reported USD is rounded."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from mcp import ClientSession
from nats.aio.client import Client as NATS
from websockets.exceptions import InvalidStatus

from homeskillet.auth import AuthSettings, mint_token
from homeskillet.config import HttpSettings, TenantSettings
from homeskillet.mcp_ws import websocket_client
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime

SECRET = "identity-test-secret-0123456789abcdef"
AUTH = AuthSettings(enabled=True, secret=SECRET)
# Priced per input token only, at a price whose float products are not round (0.3 × n / 1e6).
POOLS = [echo_pool(usd_per_mtok_in=0.3, usd_per_mtok_out=0.0),
         echo_pool("echo/h100", usd_per_hour=4.0, gpu_model="H100")]
BUDGETS = {"alpha": TenantSettings(daily_usd=1.0), "beta": TenantSettings(daily_usd=1.0)}


def token(tenant: str, **kw: Any) -> str:
    return mint_token(**{"tenant": tenant, "secret": SECRET, **kw})


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    async with start_runtime(nats_url, POOLS, http=HttpSettings(listen="127.0.0.1:0"), auth=AUTH,
                             tenants=BUDGETS) as runtime:
        yield runtime


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def h(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    assert rt.http is not None
    async with httpx.AsyncClient(base_url=rt.http.url, timeout=30) as client:
        yield client


async def call(nc: NATS, subject: str, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, Any]]:
    """A plain nats-py request: (status, JSON reply); the status is 200 or the service error code."""
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=15, headers=headers)
    code = (msg.headers or {}).get("Nats-Service-Error-Code", "200")
    return int(code), json.loads(msg.data)


async def spent(rt: Runtime, tenant: str) -> tuple[float, float]:
    assert rt.gateway is not None
    usage = await rt.gateway.usage(tenant)
    assert usage.budget is not None
    return usage.budget.spent_day_usd, usage.budget.held_usd


# --- NATS has identity ----------------------------------------------------------------------------


async def test_nats_requests_need_a_valid_token_with_the_scope(rt: Runtime, nc: NATS) -> None:
    p = rt.settings.prefix
    query, reserve = {"prompt": "hi", "model": "gemma-2b"}, {"gpu_model": "H100", "duration_s": 600}
    endpoints = [(f"{p}.query", query), (f"{p}.quote", query), (f"{p}.reserve", reserve),
                 (f"{p}.reservation.someid", query)]
    for subject, body in endpoints:
        for headers, term in ((None, "missing"), ({"Authorization": "Bearer not.a.jwt"}, "malformed"),
                              (bearer(token("alpha", secret="another-secret-0123456789abcdef!!")), "signature"),
                              (bearer(token("alpha", now=0, ttl_s=60)), "expired")):
            status, reply = await call(nc, subject, body, headers)
            assert (status, reply["code"], reply["term"]) == (401, "unauthorized", term), (subject, reply)
    query_only = bearer(token("alpha", scopes=["hs:query"]))
    reserve_only = bearer(token("alpha", scopes=["hs:reserve"]))
    for subject, body, headers in ((f"{p}.reserve", reserve, query_only), (f"{p}.query", query, reserve_only),
                                   (f"{p}.reservation.someid", query, query_only), (f"{p}.quote", query, reserve_only)):
        status, reply = await call(nc, subject, body, headers)
        assert (status, reply["term"]) == (403, "scope"), (subject, reply)
    # Header names are case-insensitive, as on HTTP.
    status, reply = await call(nc, f"{p}.query", query, {"authorization": f"Bearer {token('alpha')}"})
    assert status == 200 and reply["tenant"] == "alpha"
    assert rt.reservations is not None and rt.reservations.table == {}  # nothing refused was reserved


async def test_a_nats_client_cannot_spend_another_tenants_budget(rt: Runtime, nc: NATS) -> None:
    p = rt.settings.prefix
    alpha, beta = bearer(token("alpha")), bearer(token("beta"))
    # beta reserves compute of its own, over NATS.
    status, res = await call(nc, f"{p}.reserve", {"gpu_model": "H100", "duration_s": 600}, beta)
    assert status == 201 or status == 200, res
    beta_rid = res["reservation_id"]
    assert res["tenant"] == "beta"

    ask = {"prompt": "charge this to someone else", "model": "gemma-2b"}
    attempts = [(f"{p}.query", {**ask, "tenant": "beta"}, alpha, "tenant"),
                (f"{p}.query", ask, {**alpha, "X-Tenant": "beta"}, "X-Tenant"),
                (f"{p}.quote", {**ask, "tenant": "beta"}, alpha, "tenant"),
                (f"{p}.reserve", {"gpu_model": "H100", "tenant": "beta"}, alpha, "tenant"),
                (f"{p}.reservation.{beta_rid}", {**ask, "tenant": "beta"}, alpha, "tenant")]
    for subject, body, headers, term in attempts:
        status, reply = await call(nc, subject, body, headers)
        assert (status, reply["code"], reply["term"]) == (403, "forbidden", term), (subject, reply)
        assert "'beta'" in reply["message"] and "'alpha'" in reply["message"]
    # beta's reservation is not alpha's to use, however it is asked for: the same 404 as an unknown id.
    status, reply = await call(nc, f"{p}.reservation.{beta_rid}", ask, alpha)
    assert status == 404 and beta_rid in reply["message"]
    assert await spent(rt, "beta") == (0.0, 0.0)  # not a cent of beta's budget spent or held

    # alpha's own queries, with its tenant left out or named, are served and charged to alpha.
    for body in (ask, {**ask, "tenant": "alpha"}, {**ask, "tenant": "default"}):
        status, answer = await call(nc, f"{p}.query", body, alpha)
        assert status == 200 and answer["tenant"] == "alpha", answer
    assert (await spent(rt, "alpha"))[0] > 0
    assert await spent(rt, "beta") == (0.0, 0.0)
    report = await rt.ledger_report()
    assert set(report.spent_usd) == {"alpha"}
    assert rt.reservations is not None
    assert [r.tenant for r in rt.reservations.table.values()] == ["beta"]  # alpha's attempt reserved nothing


async def test_homeskillet_ask_sends_a_token(rt: Runtime, nats_url: str, tmp_path: Path) -> None:
    config = tmp_path / "hs.toml"
    config.write_text(f'prefix = "{rt.settings.prefix}"\n')

    async def ask(*extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        import os
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "homeskillet.cli", "ask", "who pays?", "--model", "gemma-2b", "--nats", nats_url,
            "--config", str(config), "--json", *extra, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await ask("--token", token("alpha"))
    assert code == 0 and json.loads(out)["tenant"] == "alpha", out + err
    code, out, err = await ask(env={"HOMESKILLET_TOKEN": token("gamma")})
    assert code == 0 and json.loads(out)["tenant"] == "gamma", out + err
    code, out, err = await ask()
    assert json.loads(out)["code"] == "unauthorized" and json.loads(out)["status"] == 401, out + err
    code, out, err = await ask("--token", token("alpha"), "--tenant", "beta")
    assert json.loads(out)["code"] == "forbidden", out + err


# --- one rule on every ingress ----------------------------------------------------------------------


async def test_one_rule_for_a_named_tenant_on_http_mcp_and_nats(rt: Runtime, nc: NATS, h: httpx.AsyncClient) -> None:
    p, tok = rt.settings.prefix, token("alpha")
    ask = {"prompt": "whose is this?", "model": "gemma-2b"}
    refusals: dict[str, tuple[int, str | None, str]] = {}  # ingress/place → (status, term, message)

    # NATS: the payload and the X-Tenant header.
    for place, body, headers in (("tenant", {**ask, "tenant": "beta"}, bearer(tok)),
                                 ("X-Tenant", ask, {**bearer(tok), "X-Tenant": "beta"})):
        status, reply = await call(nc, f"{p}.query", body, headers)
        refusals[f"nats {place}"] = (status, reply["term"], reply["message"])
    # HTTP: the body, the X-Tenant header and the query string, on both APIs.
    for place, body, headers, params in (("tenant", {**ask, "tenant": "beta"}, bearer(tok), None),
                                         ("X-Tenant", ask, {**bearer(tok), "X-Tenant": "beta"}, None),
                                         ("?tenant", ask, bearer(tok), {"tenant": "beta"})):
        r = await h.post("/api/v1/query", json=body, headers=headers, params=params)
        refusals[f"http {place}"] = (r.status_code, r.json()["term"], r.json()["message"])
        chat = {"model": "gemma-2b", "messages": [{"role": "user", "content": "hi"}],
                **({"tenant": "beta"} if place == "tenant" else {})}
        r = await h.post("/v1/chat/completions", json=chat, headers=headers, params=params)
        err = r.json()["error"]
        refusals[f"openai {place}"] = (r.status_code, err["param"], err["message"])
        assert err["type"] == "permission_error"
    r = await h.get("/api/v1/usage", headers=bearer(tok), params={"tenant": "beta"})
    refusals["http usage ?tenant"] = (r.status_code, r.json()["term"], r.json()["message"])
    # MCP: a tool argument, and the X-Tenant header of the upgrade.
    assert rt.http is not None
    url = rt.http.url.replace("http://", "ws://") + "/mcp/ws"
    async with websocket_client(url, token=tok) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for tool, args in (("query", {"prompt": "hi", "tenant": "beta"}), ("reserve", {"gpu_model": "H100",
                                                                                       "tenant": "beta"})):
            out = await session.call_tool(tool, args)
            assert out.is_error and out.structured_content is not None
            sc = out.structured_content
            refusals[f"mcp {tool} tenant"] = (sc["status"], sc["term"], sc["message"])
        # Naming one's own tenant is fine, on MCP as everywhere.
        same = await session.call_tool("query", {"prompt": "mine", "tenant": "alpha"})
        assert not same.is_error and same.structured_content is not None
    with pytest.raises(InvalidStatus) as denied:
        async with websocket_client(url, token=tok, headers={"X-Tenant": "beta"}):
            pass
    assert denied.value.response.status_code == 403
    refusals["mcp ws X-Tenant"] = (403, json.loads(denied.value.response.body)["term"],
                                   json.loads(denied.value.response.body)["error_description"])
    r = await h.post("/mcp", headers={**bearer(tok), "X-Tenant": "beta"},
                     json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    refusals["mcp http X-Tenant"] = (r.status_code, r.json()["term"], r.json()["error_description"])

    for where, (status, term, message) in refusals.items():
        place = where.rsplit(" ", 1)[1]
        assert (status, term) == (403, place), (where, status, term, message)
        assert f"{place} names tenant 'beta' but the token's tenant is 'alpha'" in message, where
    # One message per place, whichever ingress it came through.
    assert len({m for w, (_, _, m) in refusals.items() if w.endswith(" tenant")}) == 1
    assert await spent(rt, "beta") == (0.0, 0.0)

    # The same tenant named everywhere at once is fine.
    r = await h.post("/api/v1/query", json={**ask, "tenant": "alpha"}, params={"tenant": "alpha"},
                     headers={**bearer(tok), "X-Tenant": "alpha"})
    assert r.status_code == 200 and r.json()["tenant"] == "alpha"
    status, reply = await call(nc, f"{p}.query", {**ask, "tenant": "alpha"}, {**bearer(tok), "X-Tenant": "alpha"})
    assert status == 200 and reply["tenant"] == "alpha"


# --- allocations, money, schema -------------------------------------------------------------------------


async def test_allocations_lists_only_the_callers_own(rt: Runtime, h: httpx.AsyncClient) -> None:
    a, b = bearer(token("alpha")), bearer(token("beta"))
    made = {}
    for who, n in ((a, 2), (b, 1)):
        for _ in range(n):
            r = await h.post("/api/v1/allocations", headers=who, json={"model": "gemma-2b", "duration_s": 600})
            assert r.status_code == 201, r.text
            made.setdefault(r.json()["tenant"], []).append(r.json()["reservation_id"])
    mine = (await h.get("/api/v1/allocations", headers=a)).json()
    assert mine["kind"] == "reservations" and mine["tenant"] == "alpha"
    assert sorted(x["reservation_id"] for x in mine["reservations"]) == sorted(made["alpha"])
    assert {x["tenant"] for x in mine["reservations"]} == {"alpha"}
    theirs = (await h.get("/api/v1/allocations", headers=b)).json()
    assert [x["reservation_id"] for x in theirs["reservations"]] == made["beta"]
    # Released ones are listed with their status, and can be filtered.
    assert (await h.delete(f"/api/v1/allocations/{made['alpha'][0]}", headers=a)).status_code == 200
    active = (await h.get("/api/v1/allocations", headers=a, params={"status": "active"})).json()
    assert [x["reservation_id"] for x in active["reservations"]] == [made["alpha"][1]]
    released = (await h.get("/api/v1/allocations", headers=a, params={"status": "released"})).json()
    assert [x["reservation_id"] for x in released["reservations"]] == [made["alpha"][0]]
    # Asking for another tenant's list is refused, not answered with one's own or theirs.
    r = await h.get("/api/v1/allocations", headers=a, params={"tenant": "beta"})
    assert r.status_code == 403 and r.json()["term"] == "?tenant"
    r = await h.get("/api/v1/allocations", headers=a, params={"status": "lost"})
    assert r.status_code == 400 and r.json()["term"] == "status"
    assert (await h.get("/api/v1/allocations")).status_code == 401
    assert (await h.get("/api/v1/allocations", headers=bearer(token("alpha", scopes=["hs:query"])))).status_code == 403


def _usd_fields(value: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _usd_fields(v, f"{path}.{k}")
                if not isinstance(v, float) or k.endswith("usd")]
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in _usd_fields(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, float) else []


async def test_reported_usd_is_rounded_to_the_nano_dollar(rt: Runtime, h: httpx.AsyncClient) -> None:
    a = bearer(token("alpha"))
    replies = []
    for prompt in ("one two three four five six seven", "a b c", "What is a strike? Who pays for it?"):
        r = await h.post("/api/v1/query", headers=a, json={"prompt": prompt, "model": "gemma-2b"})
        assert r.status_code == 200, r.text
        replies.append(r.json())
    replies.append((await h.post("/api/v1/quote", headers=a, json={"prompt": "x y", "model": "gemma-2b"})).json())
    usage = (await h.get("/api/v1/usage", headers=a)).json()
    replies.append(usage)
    fields = [f for reply in replies for f in _usd_fields(reply)]
    assert len(fields) >= 10 and usage["process_spent_usd"] > 0
    for where, amount in fields:
        assert amount == round(amount, 9), (where, amount)
    # The books keep full precision; only what is reported is rounded.
    report = await rt.ledger_report()
    assert usage["process_spent_usd"] == round(report.spent_usd["alpha"], 9)


async def test_openapi_declares_the_bearer_scheme_on_protected_operations(h: httpx.AsyncClient) -> None:
    doc = (await h.get("/openapi.json")).json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            protected = path.startswith(("/v1/", "/api/v1/"))
            assert op.get("security") == ([{"bearer": []}] if protected else None), (method, path)
            if protected:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
    listing = doc["paths"]["/api/v1/allocations"]["get"]
    assert "200" in listing["responses"] and listing["parameters"][0]["name"] == "status"
