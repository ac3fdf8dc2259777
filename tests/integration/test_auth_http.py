"""Security over real HTTP with auth on: every bad token gets 401; a tenant cannot see, use or
release another tenant's allocation or read its results (404, the same as an unknown id); a tenant
in the body or headers other than the token's is refused (403)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from homeskillet.auth import AuthSettings, mint_token
from homeskillet.config import HttpSettings
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime

SECRET = "auth-test-secret-0123456789abcdef!"
AUTH = AuthSettings(enabled=True, secret=SECRET, issuer="hs-test", audience="homeskillet")


def token(tenant: str, **kw: object) -> str:
    args: dict[str, object] = {"tenant": tenant, "secret": SECRET, "issuer": "hs-test", "audience": "homeskillet"}
    return mint_token(**{**args, **kw})  # type: ignore[arg-type]


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
async def http(nats_url: str) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    pools = [echo_pool("echo/h100", usd_per_hour=4.0, gpu_model="H100")]
    async with start_runtime(nats_url, pools, http=HttpSettings(listen="127.0.0.1:0"), auth=AUTH) as rt:
        assert rt.http is not None
        async with httpx.AsyncClient(base_url=rt.http.url, timeout=30) as h:
            yield rt, h


BAD = {
    "missing": None,
    "expired": token("acme", now=time.time() - 7200, ttl_s=60),
    "signature": token("acme", secret="another-secret-0123456789abcdef!!"),
    "audience": token("acme", audience="someone-else"),
    "issuer": token("acme", issuer="evil"),
    "tenant_claim": token("acme", tenant_claim="org"),
}


@pytest.mark.parametrize("reason", list(BAD))
async def test_bad_tokens_get_401_on_both_apis(http: tuple[Runtime, httpx.AsyncClient], reason: str) -> None:
    _, h = http
    headers = bearer(BAD[reason]) if BAD[reason] else {}
    chat = await h.post("/v1/chat/completions", headers=headers,
                        json={"model": "gemma-2b", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 401 and chat.json()["error"]["type"] == "authentication_error"
    assert chat.json()["error"]["param"] == reason
    assert chat.headers["www-authenticate"].startswith("Bearer")
    for method, path in (("POST", "/api/v1/query"), ("GET", "/api/v1/usage"), ("GET", "/v1/models"),
                         ("GET", "/api/v1/allocations/anything")):
        r = await h.request(method, path, headers=headers, json={"prompt": "hi"} if method == "POST" else None)
        assert r.status_code == 401, (path, r.text)
    # Health, readiness and the schema stay open (probes and clients need them).
    assert (await h.get("/healthz")).status_code == 200
    assert (await h.get("/openapi.json")).status_code == 200


async def test_tenants_are_isolated(http: tuple[Runtime, httpx.AsyncClient]) -> None:
    _, h = http
    a, b = bearer(token("tenant-a")), bearer(token("tenant-b"))
    # The body and X-Tenant cannot move A's request to B: refused, naming where B was named.
    for headers, body, term in (({**a, "X-Tenant": "tenant-b"}, {}, "X-Tenant"), (a, {"tenant": "tenant-b"}, "tenant")):
        r = await h.post("/api/v1/compute/reserve", headers=headers,
                         json={"gpu_model": "H100", "duration_s": 600, **body})
        assert r.status_code == 403 and r.json()["term"] == term, r.text
    # Naming one's own tenant is fine.
    r = await h.post("/api/v1/compute/reserve", headers={**a, "X-Tenant": "tenant-a"},
                     json={"gpu_model": "H100", "duration_s": 600, "tenant": "tenant-a"})
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["tenant"] == "tenant-a"
    rid = res["reservation_id"]
    answer = await h.post(f"/api/v1/inference/{rid}", headers=a, json={"prompt": "secret plans"})
    assert answer.status_code == 200 and answer.json()["tenant"] == "tenant-a"
    qid = answer.json()["query_id"]
    assert (await h.get(f"/api/v1/results/{qid}", headers=a)).json()["text"] == "echo: secret plans"

    for method, path, body in (("GET", f"/api/v1/allocations/{rid}", None),
                               ("GET", f"/api/v1/allocations/{rid}/metrics", None),
                               ("POST", f"/api/v1/inference/{rid}", {"prompt": "steal"}),
                               ("DELETE", f"/api/v1/allocations/{rid}", None),
                               ("GET", f"/api/v1/results/{qid}", None)):
        r = await h.request(method, path, headers=b, json=body)
        assert r.status_code == 404, (path, r.text)
        assert "tenant-a" not in r.text and "secret plans" not in r.text
        # Another tenant's id and an unknown id get the same reply: nothing tells them apart.
        fake = path.replace(rid, "x" * len(rid)).replace(qid, "y" * len(qid))
        same = await h.request(method, fake, headers=b, json=body)
        assert same.status_code == 404
        assert r.text.replace(rid, "x" * len(rid)).replace(qid, "y" * len(qid)) == same.text
    # Nothing was changed by B's attempts: A's allocation is still active and A can release it.
    assert (await h.get(f"/api/v1/allocations/{rid}", headers=a)).json()["status"] == "active"
    assert (await h.delete(f"/api/v1/allocations/{rid}", headers=a)).json()["status"] == "released"
    # Each tenant's usage is its own.
    usage_b = (await h.get("/api/v1/usage", headers=b)).json()
    assert usage_b["tenant"] == "tenant-b" and usage_b["process_spent_usd"] == 0.0
    assert (await h.get("/api/v1/usage", headers=a)).json()["process_spent_usd"] > 0


async def test_allocation_endpoints_and_bad_input(http: tuple[Runtime, httpx.AsyncClient]) -> None:
    rt, h = http
    a = bearer(token("tenant-a"))
    assert rt.reservations is not None
    before = len(rt.reservations.table)
    for body, status, term in (({"duration_s": 600}, 400, "model"),  # an allocation names its model
                               ({"model": "gemma-2b", "duration_s": 5}, 400, "duration_s"),
                               ({"model": "gemma-2b", "count": "many"}, 400, "count")):
        r = await h.post("/api/v1/allocations", headers=a, json=body)
        assert r.status_code == status and r.json()["term"] == term, r.text
    assert len(rt.reservations.table) == before  # refused requests changed nothing
    r = await h.post("/api/v1/allocations", headers=a, json={"model": "gemma-2b", "duration_s": 600})
    assert r.status_code == 201 and r.json()["endpoint_path"].endswith(r.json()["reservation_id"])
    m = await h.get(f"/api/v1/allocations/{r.json()['reservation_id']}/metrics", headers=a)
    assert m.status_code == 200 and "allocation_id" in m.json()


async def test_a_token_does_only_what_its_scopes_grant(http: tuple[Runtime, httpx.AsyncClient]) -> None:
    rt, h = http
    assert rt.reservations is not None
    query_only, reserve_only = bearer(token("acme", scopes=["hs:query"])), bearer(token("acme", scopes=["hs:reserve"]))
    before = len(rt.reservations.table)
    refused = await h.post("/api/v1/allocations", headers=query_only, json={"model": "gemma-2b", "duration_s": 600})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden" and refused.json()["term"] == "scope"
    assert "hs:reserve" in refused.json()["message"]
    assert len(rt.reservations.table) == before  # refused, and nothing was held
    chat = {"model": "gemma-2b", "messages": [{"role": "user", "content": "hi"}]}
    assert (await h.post("/v1/chat/completions", headers=query_only, json=chat)).status_code == 200
    denied = await h.post("/v1/chat/completions", headers=reserve_only, json=chat)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    made = await h.post("/api/v1/allocations", headers=reserve_only, json={"model": "gemma-2b", "duration_s": 600})
    assert made.status_code == 201
    rid = made.json()["reservation_id"]
    assert (await h.get(f"/api/v1/allocations/{rid}", headers=query_only)).status_code == 403
    assert (await h.delete(f"/api/v1/allocations/{rid}", headers=reserve_only)).status_code == 200
    # A token with only other issuers' scopes (no hs: scope) is not restricted.
    other = bearer(token("acme", scopes=["openid", "profile"]))
    assert (await h.post("/v1/chat/completions", headers=other, json=chat)).status_code == 200
