"""The official openai SDK against our HTTP API on a real port, over a real nats-server and echo pools:
chat, streaming, models, and each error mapped to the status and exception the SDK raises."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from homeskillet.auth import AuthSettings, mint_token
from homeskillet.config import HttpSettings, TenantSettings
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime

SECRET = "openai-test-secret-0123456789abcdef"
HTTP = HttpSettings(listen="127.0.0.1:0", max_body_bytes=64 * 1024)


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    tenants = {"poor": TenantSettings(daily_usd=1e-12), "slow": TenantSettings(requests_per_minute=2)}
    async with start_runtime(nats_url, [echo_pool()], http=HTTP, tenants=tenants) as runtime:
        yield runtime


def client(rt: Runtime, key: str = "unused", **kw: object) -> openai.AsyncOpenAI:
    assert rt.http is not None
    return openai.AsyncOpenAI(base_url=rt.http.url + "/v1", api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]


async def test_chat_by_model_and_by_covenant(rt: Runtime) -> None:
    async with client(rt) as c:
        done = await c.chat.completions.create(model="gemma-2b", messages=[{"role": "user", "content": "hello there"}])
        assert done.object == "chat.completion" and done.model == "gemma-2b"
        assert done.choices[0].message.content == "echo: hello there"
        assert done.choices[0].finish_reason == "stop"
        assert done.usage is not None and done.usage.total_tokens == done.usage.prompt_tokens + \
            done.usage.completion_tokens > 0
        ext = done.model_extra["homeskillet"]  # type: ignore[index]
        assert ext["covenant"] == "gemma-2b" and ext["pools"] == ["echo/standard"] and ext["kept"] is True
        assert ext["cost_usd"] > 0 and ext["fragments"][0]["why"]
        # A covenant named in the body, with overrides, through the SDK's extra_body.
        done = await c.chat.completions.create(
            model="ignored-when-covenant-given", messages=[{"role": "user", "content": "one two three four"}],
            max_tokens=2, extra_body={"covenant": "mistral-7b", "overrides": {"qos": {"priority": 90}}})
        assert done.model_extra["homeskillet"]["covenant"] == "mistral-7b"  # type: ignore[index]
        assert done.choices[0].message.content == "echo: one two"


async def test_streaming_chunks_end_with_done(rt: Runtime) -> None:
    async with client(rt) as c:
        stream = await c.chat.completions.create(
            model="gemma-2b", messages=[{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "stream these words please"}],
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "echo: stream these words please"
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason == "stop"]
    assert len(final) == 1 and final[0].model_extra["homeskillet"]["pools"] == ["echo/standard"]  # type: ignore[index]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # The raw stream ends in the [DONE] sentinel (the SDK swallows it).
    assert rt.http is not None
    async with httpx.AsyncClient() as h:
        raw = await h.post(rt.http.url + "/v1/chat/completions",
                           json={"model": "gemma-2b", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


async def test_models_lists_covenants_and_models(rt: Runtime) -> None:
    async with client(rt) as c:
        ids = {m.id for m in (await c.models.list()).data}
    assert {"default", "gemma-2b", "qwen-70b", "smollm2-135m"} <= ids


async def test_errors_are_mapped(rt: Runtime) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    async with client(rt) as c:
        with pytest.raises(openai.NotFoundError) as nf:
            await c.chat.completions.create(model="no-such-model", messages=msgs)  # type: ignore[arg-type]
        assert nf.value.status_code == 404 and nf.value.code == "model_not_found" and nf.value.param == "model"
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="gemma-2b", messages=msgs,  # type: ignore[arg-type]
                                            extra_body={"covenant": "no-such-covenant"})
        with pytest.raises(openai.BadRequestError) as bad:
            await c.chat.completions.create(model="gemma-2b", messages=[{"role": "wizard", "content": "x"}])  # type: ignore[list-item,misc]
        assert "role" in str(bad.value.param)
        with pytest.raises(openai.BadRequestError, match="n=1"):
            await c.chat.completions.create(model="gemma-2b", messages=msgs, n=3)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await c.chat.completions.create(model="gemma-2b", messages=msgs, temperature=7)  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError) as big:
            await c.chat.completions.create(model="gemma-2b",  # type: ignore[arg-type]
                                            messages=[{"role": "user", "content": "x" * 100_000}])
        assert big.value.status_code == 413
        # Budget (402) and rate limit (429) of tenants configured in [tenants.*].
        with pytest.raises(openai.APIStatusError) as broke:
            await c.chat.completions.create(model="gemma-2b", messages=msgs,  # type: ignore[arg-type]
                                            extra_headers={"X-Tenant": "poor"})
        assert broke.value.status_code == 402 and broke.value.code == "budget_exceeded"
        for _ in range(2):
            await c.chat.completions.create(model="gemma-2b", messages=msgs,  # type: ignore[arg-type]
                                            extra_headers={"X-Tenant": "slow"})
        with pytest.raises(openai.RateLimitError) as limited:
            await c.chat.completions.create(model="gemma-2b", messages=msgs,  # type: ignore[arg-type]
                                            extra_headers={"X-Tenant": "slow"})
        assert limited.value.code == "rate_limit_exceeded"
        assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    # Malformed JSON: 400 in OpenAI's error shape.
    assert rt.http is not None
    async with httpx.AsyncClient() as h:
        r = await h.post(rt.http.url + "/v1/chat/completions", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_auth_on_needs_a_token(nats_url: str) -> None:
    auth = AuthSettings(enabled=True, secret=SECRET, audience="homeskillet")
    async with start_runtime(nats_url, [echo_pool()], http=HTTP, auth=auth) as rt:
        msgs = [{"role": "user", "content": "hi"}]
        async with client(rt, key="not-a-jwt") as c:
            with pytest.raises(openai.AuthenticationError) as err:
                await c.chat.completions.create(model="gemma-2b", messages=msgs)  # type: ignore[arg-type]
            assert err.value.status_code == 401 and err.value.param == "malformed"
        token = mint_token(tenant="acme", secret=SECRET, audience="homeskillet")
        async with client(rt, key=token) as c:
            with pytest.raises(openai.PermissionDeniedError) as denied:  # another tenant in the body: refused
                await c.chat.completions.create(model="gemma-2b", messages=msgs,  # type: ignore[arg-type]
                                                extra_body={"tenant": "someone-else"})
            assert denied.value.status_code == 403 and denied.value.param == "tenant"
            done = await c.chat.completions.create(model="gemma-2b", messages=msgs)  # type: ignore[arg-type]
        assert done.model_extra["homeskillet"]["tenant"] == "acme"  # type: ignore[index]
