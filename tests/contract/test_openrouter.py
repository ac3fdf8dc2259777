"""OpenRouter connector against its simulator over real HTTP: prices, fallbacks, provider
preferences, cost accounting, streaming, and every error of provider-apis §10 mapped to ours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from homeskillet.errors import HomeskilletError, NoCapacity, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest, connector_class
from homeskillet.providers.openrouter import OpenRouterConnector
from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.sims.openrouter import OpenRouterSim, create_app
from homeskillet.testing import serve_asgi

MINI, OPUS, LLAMA = "openai/gpt-4o-mini", "anthropic/claude-3-opus", "meta-llama/llama-3.1-8b-instruct"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def sim(config: SimConfig | None = None) -> Iterator[tuple[OpenRouterSim, str]]:
    app = create_app(config or SimConfig(seed=1, time_scale=0))
    with serve_asgi(app, "/ready") as url:  # an unknown path: a 404 that draws no fault
        yield app.state.sim, url + "/api/v1"


def faulty(**extra: Any) -> SimConfig:
    faults = extra.pop("faults", FaultPlan())
    return SimConfig(seed=1, time_scale=extra.pop("time_scale", 0), faults=faults, extra=extra)


def connect(url: str, **options: Any) -> OpenRouterConnector:
    return OpenRouterConnector(base_url=url, api_key="sim-key", **options)


def strike(model: str = MINI, prompt: str = "What is a covenant?", **kw: Any) -> InferRequest:
    return InferRequest(strike_id="s-1", model=model, prompt=prompt, max_tokens=24, **kw)


def price(s: OpenRouterSim, model: str, prompt: int, completion: int) -> float:
    p = s.models[model].pricing
    return float(Decimal(p.prompt) * prompt + Decimal(p.completion) * completion + Decimal(p.request))


def test_registered_under_its_provider_name() -> None:
    assert connector_class("openrouter") is OpenRouterConnector


async def test_quote_lists_prices_per_million_tokens_and_is_cached() -> None:
    with sim() as (s, url):
        conn = connect(url)
        try:
            offers = (await asyncio.gather(*(conn.quote(AllocationRequest()) for _ in range(50))))[0]
            assert s.counters["requests"] == 1  # one catalogue fetch shared by 50 quotes
            by_id = {o.offer_id: o for o in offers}
            assert set(by_id) == set(s.models)
            mini = by_id[MINI]
            assert mini.accelerator == "api" and mini.models == [MINI] and mini.available == 1
            assert mini.usd_per_mtok_in == pytest.approx(0.15) and mini.usd_per_mtok_out == pytest.approx(0.60)
            assert mini.usd_per_hour == 0 and not mini.preemptible
        finally:
            await conn.close()
        conn = connect(url, model=OPUS, models=[LLAMA])
        try:  # a pool serving one model quotes it and its fallbacks
            assert [o.offer_id for o in await conn.quote(AllocationRequest(model="anything"))] == [OPUS, LLAMA]
        finally:
            await conn.close()
        conn = connect(url, model_map={"llama-8b": LLAMA})
        try:
            assert [o.offer_id for o in await conn.quote(AllocationRequest(model="llama-8b"))] == [LLAMA]
            res = await conn.infer(strike("llama-8b"))
            assert res.model == LLAMA
        finally:
            await conn.close()


async def test_chat_cost_is_what_openrouter_reports() -> None:
    with sim() as (s, url):
        conn = connect(url)
        try:
            res = await conn.infer(strike(context=[]))
        finally:
            await conn.close()
        assert res.model == MINI and res.text and res.prompt_tokens > 0 and 0 < res.completion_tokens <= 24
        assert res.billed_usd == pytest.approx(s.usage_usd) and res.billed_usd > 0
        assert res.billed_usd == pytest.approx(price(s, MINI, res.prompt_tokens, res.completion_tokens))


async def test_fallback_is_billed_at_the_price_of_the_model_that_ran() -> None:
    # the gateway reports tokens only, so the connector prices them itself
    with sim(faulty(down_models=[OPUS], report_cost=False)) as (s, url):
        conn = connect(url, model=OPUS, models=[LLAMA])
        try:
            res = await conn.infer(strike("whatever-we-call-it"))
        finally:
            await conn.close()
        assert res.model == LLAMA
        assert res.billed_usd == pytest.approx(price(s, LLAMA, res.prompt_tokens, res.completion_tokens))
        assert res.billed_usd == pytest.approx(s.spent_by_model[LLAMA]) and s.spent_by_model[OPUS] == 0
        assert res.billed_usd < price(s, OPUS, res.prompt_tokens, res.completion_tokens) / 100


async def test_provider_preferences_are_passed_through() -> None:
    with sim() as (s, url):
        cheap = {"max_price": {"prompt": 1, "completion": 1}}  # USD per million tokens: rules Opus out
        conn = connect(url, model=OPUS, models=[LLAMA], provider=cheap)
        try:
            assert (await conn.infer(strike())).model == LLAMA
        finally:
            await conn.close()
        conn = connect(url, provider={"ignore": ["openai"]})
        try:
            with pytest.raises(NoCapacity, match=r"provider\.ignore") as info:
                await conn.infer(strike(MINI))
            assert info.value.http_status == 503 and info.value.retryable
        finally:
            await conn.close()
        assert s.usage_usd == pytest.approx(s.spent_by_model[LLAMA])


@pytest.mark.parametrize(("options", "named"), [({"provider": {"sortt": "price"}}, "sortt"),
                                                ({"provider": {"sort": "cheapest"}}, "sort"),
                                                ({"fallbacks": [MINI]}, "fallbacks"), ({"timeout_s": -1}, "timeout_s")])
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(HomeskilletError, match=named):
        OpenRouterConnector(api_key="k", **options)


async def test_stream_yields_the_same_text_as_a_plain_completion() -> None:
    with sim() as (s, url):
        conn = connect(url)
        try:
            pieces = [p async for p in conn.stream(strike())]
            plain = await conn.infer(strike())
        finally:
            await conn.close()
        assert len(pieces) > 1 and "".join(pieces) == plain.text
        assert s.counters["completions"] == 2


async def test_zero_token_error_finish_is_a_retryable_error_and_not_charged() -> None:
    with sim(faulty(error_finish_rate=1.0)) as (s, url):
        conn = connect(url)
        try:
            with pytest.raises(ProviderError, match="not charged") as info:
                await conn.infer(strike())
            assert info.value.retryable and info.value.http_status == 502
            with pytest.raises(ProviderError, match="not charged"):
                _ = [p async for p in conn.stream(strike())]
        finally:
            await conn.close()
        assert s.usage_usd == 0 and s.counters["completions"] == 2


@pytest.mark.parametrize(
    ("config", "prompt", "model", "error", "status", "retryable"),
    [
        (faulty(), "hi", "nope/not-a-model", ProviderError, 400, False),
        (faulty(credits_usd=0.0), "hi", MINI, ProviderError, 402, False),
        (faulty(flagged_words=["forbidden"]), "a forbidden word", MINI, ProviderError, 403, False),
        (faulty(faults=FaultPlan(timeout_rate=1.0)), "hi", MINI, ProviderError, 408, True),
        (faulty(faults=FaultPlan(rate_limit_rate=1.0)), "hi", MINI, RateLimited, 429, True),
        (faulty(upstream_error_rate=1.0), "hi", MINI, ProviderError, 502, True),
        (faulty(down_models=[MINI]), "hi", MINI, NoCapacity, 503, True),
        (faulty(faults=FaultPlan(outage=True)), "hi", MINI, NoCapacity, 503, True),
    ],
)
async def test_errors_are_mapped(config: SimConfig, prompt: str, model: str, error: type[ProviderError], status: int,
                                 retryable: bool) -> None:
    with sim(config) as (s, url):
        conn = connect(url)
        try:
            with pytest.raises(error) as info:
                await conn.infer(strike(model, prompt))
            assert type(info.value) is error and info.value.http_status == status
            assert info.value.retryable is retryable and info.value.message
        finally:
            await conn.close()
        assert s.usage_usd == 0  # a failed request is never charged


async def test_bad_key_is_an_auth_error() -> None:
    with sim() as (_, url):
        conn = OpenRouterConnector(base_url=url, api_key="sk-or-wrong-0123")
        try:
            with pytest.raises(ProviderAuthError) as info:
                await conn.infer(strike())
            assert "sk-or-wrong-0123" not in str(info.value) and not info.value.retryable
            assert not (await conn.health()).ok
        finally:
            await conn.close()


async def test_rate_limit_honours_retry_after() -> None:
    ours = Clock()
    with sim(faulty(faults=FaultPlan(rate_limit_rate=1.0), retry_after_s=2)) as (s, url):
        conn = connect(url, clock=ours)
        try:
            with pytest.raises(RateLimited) as info:
                await conn.infer(strike())
            assert info.value.retry_after_s == 2.0
            sent = s.counters["requests"]
            with pytest.raises(RateLimited):  # inside the window: nothing is sent
                await conn.infer(strike())
            assert all(o.available == 0 for o in await conn.quote(AllocationRequest(model=MINI)))
            assert s.counters["requests"] == sent + 1  # only the public catalogue was fetched
            ours.advance(2.01)
            with pytest.raises(RateLimited):
                await conn.infer(strike())
            assert s.counters["requests"] == sent + 2
        finally:
            await conn.close()


async def test_out_of_credits_stops_quoting_until_credits_return() -> None:
    ours = Clock()
    with sim(faulty(credits_usd=0.0)) as (s, url):
        conn = connect(url, clock=ours, credits_recheck_s=30)
        try:
            assert (await conn.quote(AllocationRequest(model=MINI)))[0].available == 1
            with pytest.raises(ProviderError, match="out of credits"):
                await conn.infer(strike())
            assert (await conn.quote(AllocationRequest(model=MINI)))[0].available == 0
            s.credits_usd = 5.0  # the account is topped up
            assert (await conn.quote(AllocationRequest(model=MINI)))[0].available == 0  # not rechecked yet
            ours.advance(30)
            assert (await conn.quote(AllocationRequest(model=MINI)))[0].available == 1
            assert (await conn.health()).ok
            assert (await conn.infer(strike())).billed_usd
        finally:
            await conn.close()


async def test_timeout_is_retryable_within_our_timeout() -> None:
    with sim(faulty(faults=FaultPlan(timeout_rate=1.0, timeout_s=2.0), time_scale=1)) as (_, url):
        conn = connect(url, timeout_s=0.3)
        try:
            for call in (lambda: conn.infer(strike()), lambda: _drain(conn.stream(strike()))):
                t0 = time.monotonic()
                with pytest.raises(ProviderError, match=r"no answer within 0\.3s") as info:
                    await call()
                assert time.monotonic() - t0 < 1.5 and info.value.retryable
        finally:
            await conn.close()


async def _drain(pieces: Any) -> list[str]:
    return [p async for p in pieces]


async def test_deadline_shortens_the_wait() -> None:
    with sim(faulty(faults=FaultPlan(timeout_rate=1.0, timeout_s=2.0), time_scale=1)) as (_, url):
        conn = connect(url, timeout_s=30)
        try:
            t0 = time.monotonic()
            with pytest.raises(ProviderError, match="no answer"):
                await conn.infer(strike(deadline_ms=int(time.time() * 1000) + 300))
            assert time.monotonic() - t0 < 1.5
        finally:
            await conn.close()


def test_unsupported_features_give_reasons() -> None:
    conn = OpenRouterConnector(api_key="k")
    assert {"allocate", "release", "metrics"} <= set(conn.unsupported)
    assert conn.supports("quote") and conn.supports("stream")




async def test_example_pools_make_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    import msgspec

    from homeskillet.config import load_settings
    from homeskillet.runtime import make_connector

    monkeypatch.setenv("OPENROUTER_API_KEY", "sim-key")
    settings = load_settings(Path(__file__).parents[2] / "examples" / "pools-openrouter.toml")
    with sim() as (s, url):
        for spec in settings.pools:
            conn = make_connector(msgspec.structs.replace(spec, options={**spec.options, "base_url": url}))
            try:
                assert isinstance(conn, OpenRouterConnector)
                res = await conn.infer(strike(spec.models[0]))
                assert res.model in s.models and res.billed_usd
            finally:
                await conn.close()
