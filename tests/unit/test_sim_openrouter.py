"""The OpenRouter simulator, driven by the official openai SDK and by plain httpx, in-process."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import msgspec
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from homeskillet.sims.base import FaultPlan, SimConfig, count_tokens
from homeskillet.sims.openrouter import OpenRouterSim, create_app
from homeskillet.sims.openrouter.app import _stream
from homeskillet.sims.openrouter.wire import ChatRequest

MINI, OPUS, LLAMA, MISTRAL = (
    "openai/gpt-4o-mini",
    "anthropic/claude-3-opus",
    "meta-llama/llama-3.1-8b-instruct",
    "mistralai/mistral-7b-instruct",
)
HELLO: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Explain covenants"},
]


class Sim:
    def __init__(self, config: SimConfig | None = None, api_key: str = "sim-key") -> None:
        self.app = create_app(config or SimConfig(time_scale=0), clock=lambda: 1_750_000_000.0)
        self.state: OpenRouterSim = self.app.state.sim
        transport = httpx.ASGITransport(app=self.app)
        self.http = httpx.AsyncClient(
            transport=transport, base_url="http://sim/api/v1", headers={"Authorization": f"Bearer {api_key}"}
        )
        self.sdk = openai.AsyncOpenAI(
            base_url="http://sim/api/v1", api_key=api_key, max_retries=0,
            # openai 3 is typed for httpx2 but also accepts an httpx client, as used here
            http_client=httpx.AsyncClient(transport=transport),  # type: ignore[arg-type]
        )  # fmt: skip

    def cost(self, model: str, prompt: int, completion: int) -> float:
        p = self.state.models[model].pricing
        return float(Decimal(p.prompt) * prompt + Decimal(p.completion) * completion + Decimal(p.request))


def _err(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == status and error["message"] and isinstance(error["metadata"], dict)
    return error


async def test_models_catalogue_is_public_and_priced_per_token() -> None:
    s = Sim(api_key="anything")
    r = await s.http.get("/models")
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["data"]}
    assert {MINI, OPUS, LLAMA, MISTRAL, "qwen/qwen-2.5-72b-instruct", "google/gemma-2-9b-it"} == set(models)
    opus = models[OPUS]
    assert opus["canonical_slug"] == OPUS and opus["context_length"] == 200_000
    assert opus["pricing"]["prompt"] == "0.000015" and opus["pricing"]["completion"] == "0.000075"
    assert set(opus["architecture"]) >= {"input_modalities", "output_modalities", "tokenizer"}
    assert set(opus["top_provider"]) == {"context_length", "max_completion_tokens", "is_moderated"}
    for m in models.values():
        assert all(isinstance(v, str) and Decimal(v) >= 0 for v in m["pricing"].values())
        assert "max_tokens" in m["supported_parameters"]


async def test_models_override_from_config() -> None:
    extra = {"models": [{"id": "acme/tiny", "pricing": {"prompt": "0.000001", "completion": "0.000002"}}]}
    s = Sim(SimConfig(time_scale=0, extra=extra))
    (model,) = (await s.http.get("/models")).json()["data"]
    assert model["id"] == model["canonical_slug"] == model["name"] == "acme/tiny"
    assert model["top_provider"]["context_length"] == model["context_length"] == 8192
    resp = await s.sdk.chat.completions.create(model="acme/tiny", messages=HELLO)
    assert resp.model == "acme/tiny"


async def test_chat_with_the_openai_sdk_and_generation_stats() -> None:
    s = Sim()
    resp = await s.sdk.chat.completions.create(model=MINI, messages=HELLO, max_tokens=64)
    assert resp.object == "chat.completion" and resp.model == MINI and resp.id.startswith("gen-")
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "stop"
    assert resp.usage is not None
    u = resp.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens <= 64
    cost = s.cost(MINI, u.prompt_tokens, u.completion_tokens)
    gen = (await s.http.get("/generation", params={"id": resp.id})).json()["data"]
    assert gen["model"] == MINI and gen["total_cost"] == pytest.approx(cost)
    assert (gen["tokens_prompt"], gen["tokens_completion"]) == (u.prompt_tokens, u.completion_tokens)
    assert gen["latency"] >= 0 and gen["streamed"] is False
    credits = (await s.http.get("/credits")).json()["data"]
    assert credits == {"total_credits": 100.0, "total_usage": pytest.approx(cost)}
    key = (await s.http.get("/key")).json()["data"]
    assert key["limit_remaining"] == pytest.approx(100.0 - cost)
    _err(await s.http.get("/generation", params={"id": "gen-nope"}), 404)
    _err(await s.http.get("/generation"), 400)


async def test_max_tokens_truncates_with_finish_reason_length() -> None:
    s = Sim()
    resp = await s.sdk.chat.completions.create(model=MINI, messages=HELLO, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens <= 3
    assert resp.choices[0].finish_reason == "length"


async def test_streaming_chunks_match_the_plain_answer() -> None:
    s = Sim()
    plain = await s.sdk.chat.completions.create(model=LLAMA, messages=HELLO)
    stream = await s.sdk.chat.completions.create(model=LLAMA, messages=HELLO, stream=True)
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == LLAMA for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert s.state.generations[chunks[0].id].streamed is True
    raw = await s.http.post("/chat/completions", json={"model": LLAMA, "messages": HELLO, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    lines = [ln for ln in raw.text.split("\n\n") if ln]
    assert lines[0] == ": OPENROUTER PROCESSING" and lines[-1] == "data: [DONE]"


async def test_error_mapping_through_the_sdk() -> None:
    with pytest.raises(openai.AuthenticationError):
        await Sim(api_key="wrong").sdk.chat.completions.create(model=MINI, messages=HELLO)
    broke = Sim(SimConfig(time_scale=0, extra={"credits_usd": 0.0}))
    with pytest.raises(openai.APIStatusError) as info:
        await broke.sdk.chat.completions.create(model=MINI, messages=HELLO)
    assert info.value.status_code == 402
    with pytest.raises(openai.RateLimitError):
        limited = Sim(SimConfig(time_scale=0, faults=FaultPlan(rate_limit_rate=1.0)))
        await limited.sdk.chat.completions.create(model=MINI, messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        await Sim().sdk.chat.completions.create(model="nope/none", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        down = Sim(SimConfig(time_scale=0, faults=FaultPlan(outage=True)))
        await down.sdk.chat.completions.create(model=MINI, messages=HELLO)


async def test_models_fallback_bills_the_model_that_ran() -> None:
    s = Sim(SimConfig(time_scale=0, extra={"down_models": [OPUS]}))
    resp = await s.sdk.chat.completions.create(model=OPUS, messages=HELLO, extra_body={"models": [MINI]})
    assert resp.model == MINI and resp.usage is not None
    assert set(s.state.spent_by_model) == {MINI}
    assert s.state.usage_usd == pytest.approx(
        s.cost(MINI, resp.usage.prompt_tokens, resp.usage.completion_tokens)
    )
    assert s.state.counters["upstream_errors"] == 1


@pytest.mark.parametrize(
    ("faults", "extra", "status"),
    [
        (FaultPlan(unavailable_rate=1.0), {}, 503),
        (FaultPlan(timeout_rate=1.0, timeout_s=9.0), {}, 408),
        (FaultPlan(), {"upstream_error_rate": 1.0}, 502),
    ],
)
async def test_upstream_failures_are_never_charged(
    faults: FaultPlan, extra: dict[str, Any], status: int
) -> None:
    s = Sim(SimConfig(time_scale=0, faults=faults, extra=extra))
    r = await s.http.post("/chat/completions", json={"model": OPUS, "models": [MINI], "messages": HELLO})
    error = _err(r, status)
    assert error["metadata"]["provider_name"] == "openai"  # the last model tried
    assert s.state.usage_usd == 0 and not s.state.generations
    assert s.state.counters["upstream_errors"] == 2
    if status == 408:
        assert s.state.slept_ms == 2 * 9000


async def test_provider_preferences() -> None:
    s = Sim()

    async def chat(**fields: Any) -> httpx.Response:
        return await s.http.post("/chat/completions", json={"messages": HELLO, **fields})

    cheap = {"max_price": {"prompt": 1, "completion": 1}}  # USD per million tokens
    assert "max_price.prompt" in _err(await chat(model=OPUS, provider=cheap), 503)["message"]
    r = await chat(model=OPUS, models=[LLAMA], provider=cheap)
    assert r.status_code == 200 and r.json()["model"] == LLAMA
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    r = await chat(model=MISTRAL, tools=tools, provider={"require_parameters": True})
    assert "tools" in _err(r, 503)["message"]
    _err(await chat(model=MINI, provider={"ignore": ["openai"]}), 503)
    assert (
        await chat(model=MINI, provider={"order": ["openai"], "allow_fallbacks": False})
    ).status_code == 200
    _err(await chat(model=MINI, provider={"sort": "cheapest"}), 400)
    assert "max_prices" in _err(await chat(model=MINI, provider={"max_prices": {}}), 400)["message"]
    gemma = "google/gemma-2-9b-it"  # 8192 tokens of context
    assert "context length" in _err(await chat(model=gemma, max_tokens=9000), 400)["message"]
    assert (await chat(model=gemma, models=[MINI], max_tokens=9000)).json()["model"] == MINI


async def test_credits_run_out_and_max_tokens_must_be_affordable() -> None:
    s = Sim(SimConfig(time_scale=0, extra={"credits_usd": 0.01}))
    r = await s.http.post("/chat/completions", json={"model": OPUS, "messages": HELLO, "max_tokens": 4000})
    assert "can only afford" in _err(r, 402)["message"]
    while (
        await s.http.post("/chat/completions", json={"model": OPUS, "messages": HELLO})
    ).status_code == 200:
        pass  # spend until the balance is gone (the last call may overdraw, as on OpenRouter)
    assert s.state.usage_usd >= 0.01
    _err(await s.http.post("/chat/completions", json={"model": MINI, "messages": HELLO}), 402)


async def test_cancelled_stream_pays_for_what_was_sent() -> None:
    # httpx's ASGITransport buffers whole bodies, so hang up on the SSE generator directly.
    s = Sim()
    run = await s.state.run(msgspec.convert({"model": OPUS, "messages": HELLO}, ChatRequest), set())
    stream = _stream(s.state, run)
    frames = [await anext(stream) for _ in range(4)]  # keep-alive, role chunk, two content chunks
    await stream.aclose()
    sent = "".join(
        msgspec.json.decode(f[len(b"data: ") :])["choices"][0]["delta"]["content"] for f in frames[1:]
    )
    gen = s.state.generations[run.id]
    assert gen.cancelled and gen.streamed and 0 < gen.tokens_completion < run.completion_tokens
    assert gen.tokens_completion == count_tokens(sent)
    assert s.state.usage_usd == pytest.approx(s.cost(OPUS, run.prompt_tokens, gen.tokens_completion))


async def test_same_seed_same_run() -> None:
    async def trace(seed: int) -> list[Any]:
        s = Sim(SimConfig(seed=seed, time_scale=0, faults=FaultPlan(unavailable_rate=0.3)))
        out = []
        for _ in range(10):
            r = await s.http.post(
                "/chat/completions", json={"model": OPUS, "models": [MINI], "messages": HELLO}
            )
            out.append((r.status_code, r.json().get("model"), r.json().get("id")))
        return out

    first = await trace(3)
    assert first == await trace(3) and first != await trace(4)
    assert {status for status, *_ in first} >= {200}


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_content = st.text(max_size=50) | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": _content}
)
_max_price = st.fixed_dictionaries(
    {}, optional={k: st.floats(0, 100) for k in ("prompt", "completion", "request")}
)
_provider = st.fixed_dictionaries(
    {},
    optional={
        "max_price": _max_price,
        "require_parameters": st.booleans(),
        "allow_fallbacks": st.booleans(),
        "only": st.lists(st.sampled_from(["openai", "anthropic", "deepinfra", "x"])),
        "order": st.lists(st.sampled_from(["openai", "together"])),
        "sort": st.sampled_from(["price", "latency", "throughput"]),
        "preferred_max_latency": st.floats(0, 10)
        | st.dictionaries(st.sampled_from(["p50", "p90"]), st.floats(0, 9)),
    },
)
_valid_chat = st.fixed_dictionaries(
    {
        "model": st.sampled_from([MINI, OPUS, "google/gemma-2-9b-it"]),
        "messages": st.lists(_message, min_size=1),
    },
    optional={
        "models": st.lists(st.sampled_from([MINI, LLAMA, MISTRAL]), max_size=3),
        "max_tokens": st.integers(1, 10**7),
        "temperature": st.floats(0, 2),
        "stream": st.booleans(),
        "tools": st.just([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        "provider": _provider,
    },
)
_CHAT_KEYS = ["model", "messages", "models", "max_tokens", "temperature", "stream", "provider", "x"]
_spoiled_chat = st.tuples(_valid_chat, st.sampled_from(_CHAT_KEYS), _json).map(lambda t: {**t[0], t[1]: t[2]})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_valid_chat | _spoiled_chat | _json)
async def test_arbitrary_chat_bodies_never_5xx(body: Any) -> None:
    r = await Sim().http.post("/chat/completions", json=body)
    routing = r.status_code == 503 and "No endpoints found" in r.text  # §10: no provider meets the routing
    assert r.status_code < 500 or routing, r.text
    if r.status_code >= 400:
        _err(r, r.status_code)


@settings(max_examples=50, deadline=None)
@given(raw=st.binary(max_size=60))
async def test_arbitrary_chat_bytes_never_5xx(raw: bytes) -> None:
    _err(await Sim().http.post("/chat/completions", content=raw), 400)


async def test_moderation_retry_after_error_finish_and_cost_reporting() -> None:
    def sim(**extra: Any) -> Sim:
        faults = extra.pop("faults", FaultPlan())
        return Sim(SimConfig(time_scale=0, faults=faults, extra=extra))

    body = {"model": MINI, "messages": [{"role": "user", "content": "a Forbidden topic"}]}
    r = await sim(flagged_words=["forbidden"]).http.post("/chat/completions", json=body)
    assert r.status_code == 403 and _err(r, 403)["metadata"]["reasons"] == ["harassment"]
    r = await sim(faults=FaultPlan(rate_limit_rate=1.0), retry_after_s=3).http.post("/chat/completions", json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    s = sim(error_finish_rate=1.0)
    r = await s.http.post("/chat/completions", json=body)
    out = r.json()
    assert r.status_code == 200 and out["choices"][0]["finish_reason"] == "error" and out["error"]["code"] == 502
    assert out["usage"]["completion_tokens"] == 0 and out["usage"]["cost"] == 0 and s.state.usage_usd == 0
    r = await sim(report_cost=False).http.post("/chat/completions", json=body)
    assert r.status_code == 200 and "cost" not in r.json()["usage"]
