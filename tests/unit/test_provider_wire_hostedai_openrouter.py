"""The pure halves of the hosted.ai and OpenRouter connectors, on recorded payloads."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from homeskillet.errors import NoCapacity, ProviderAuthError, ProviderError, RateLimited
from homeskillet.providers.base import AllocationRequest, InferRequest
from homeskillet.providers.hostedai import wire as hai
from homeskillet.providers.openrouter import wire as orw
from homeskillet.wire import Message


def _env(code: str, message: str = "m") -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (401, _env("invalid_api_key"), ProviderAuthError, False),
        (409, _env("insufficient_capacity"), NoCapacity, True),
        (422, _env("unsatisfiable_requirements"), NoCapacity, True),
        (404, _env("pool_not_found"), ProviderError, False),
        (503, _env("service_unavailable"), ProviderError, True),
        (504, _env("gateway_timeout"), ProviderError, True),
        (502, b"<html>bad gateway</html>", ProviderError, True),
    ],
)
def test_hostedai_errors(status: int, body: bytes, error: type[ProviderError], retryable: bool) -> None:
    err = hai.error_for(status, body, None)
    assert type(err) is error and err.retryable is retryable and err.http_status == status


def test_hostedai_gone_and_rate_limit() -> None:
    gone = hai.error_for(410, _env("preempted", "evicted"), None)
    assert isinstance(gone, hai.AllocationGone) and gone.state == "preempted"
    limited = hai.error_for(429, _env("rate_limited"), 1.5)
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 1.5


def test_hostedai_allocation_lifetime_is_counted_on_our_clock() -> None:
    view = hai.AllocationView(id="a-1", pool_id="standard-us-east", status="active",
                              created_at="2023-11-14T22:13:20Z", expires_at="2023-11-14T22:18:20Z",
                              price_per_hour=0.8, metadata={"tenant_id": "acme"})  # fmt: skip
    alloc = hai.allocation_from(view, now=2_000_000_000.0)
    assert alloc.status == "running" and alloc.expires_at == 2_000_000_300.0 and alloc.usd_per_hour == 0.8
    assert hai.billed_for(0.01, 3.6) == pytest.approx(0.001) and hai.billed_for(2.0, 3.6) == pytest.approx(0.002)


def test_hostedai_misfit_names_the_term() -> None:
    pool = hai.PoolView(id="p", region="eu", vram_mb=8192, tflops=10, price_per_hour=1.0, preemptible=True)
    assert "min_vram_mb" in (hai.misfit(pool, AllocationRequest(min_vram_mb=9000, preemptible=True)) or "")
    assert "preemptible" in (hai.misfit(pool, AllocationRequest()) or "")
    assert "max_usd_per_hour" in (hai.misfit(pool, AllocationRequest(preemptible=True, max_usd_per_hour=0.5)) or "")
    assert hai.misfit(pool, AllocationRequest(preemptible=True, region="eu")) is None
    body = hai.allocate_body(AllocationRequest(min_vram_mb=2048, tenant="t", workload="w"), "p", True)
    assert msgspec.json.decode(msgspec.json.encode(body)) == {
        "pool_id": "p", "requirements": {"min_tflops": 0.0, "min_vram_mb": 2048}, "duration_seconds": 3600,
        "preemptible": True, "metadata": {"tenant_id": "t", "workload_id": "w"}}  # fmt: skip
    assert hai.prompt_text("q", [Message(role="system", content="be brief")]) == "system: be brief\nq"


@given(st.decimals(min_value=0, max_value=1, places=12, allow_nan=False, allow_infinity=False))
def test_openrouter_per_token_strings_become_per_million(price: Decimal) -> None:
    assert orw.per_million(str(price)) == pytest.approx(float(price * 1_000_000))


def test_openrouter_prices_and_costs() -> None:
    assert orw.per_million("-1") is None and orw.per_million("n/a") is None
    model = orw.ModelEntry(id="m", pricing=orw.Pricing(prompt="0.00000015", completion="0.0000006"))
    offer = orw.offer_from(model, available=True)
    assert offer is not None and offer.usd_per_mtok_in == pytest.approx(0.15)
    assert offer.usd_per_mtok_out == pytest.approx(0.6)
    assert orw.offer_from(orw.ModelEntry(id="auto", pricing=orw.Pricing(prompt="-1")), available=True) is None
    usage = orw.Usage(prompt_tokens=1000, completion_tokens=100)
    assert orw.cost_usd(usage, model.pricing) == pytest.approx(0.00015 + 0.00006)
    assert orw.cost_usd(orw.Usage(cost=0.5), model.pricing) == 0.5  # the provider's own figure wins
    assert orw.cost_usd(usage, None) is None


def test_openrouter_request_body_passes_fallbacks_and_preferences() -> None:
    prefs = msgspec.convert({"sort": "price", "max_price": {"prompt": 1}}, orw.ProviderPrefs)
    req = InferRequest(strike_id="s", model="m", prompt="q", context=[Message(role="system", content="c")])
    body = msgspec.json.decode(msgspec.json.encode(orw.chat_body(req, "a/b", fallbacks=["a/b", "c/d"], prefs=prefs,
                                                                 stream=True)))
    assert body == {"model": "a/b", "messages": [{"role": "system", "content": "c"}, {"role": "user", "content": "q"}],
                    "max_tokens": 256, "temperature": 0.0, "stream": True, "models": ["c/d"],
                    "provider": {"sort": "price", "max_price": {"prompt": 1.0}}}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [(400, ProviderError, False), (401, ProviderAuthError, False), (402, ProviderError, False),
     (403, ProviderError, False), (408, ProviderError, True), (429, RateLimited, True), (502, ProviderError, True),
     (503, NoCapacity, True), (500, ProviderError, True)],
)
def test_openrouter_errors(status: int, error: type[ProviderError], retryable: bool) -> None:
    body = msgspec.json.encode({"error": {"code": status, "message": "why", "metadata": {"reasons": ["x"]}}})
    err = orw.error_for(status, body, None)
    assert type(err) is error and err.retryable is retryable and "why" in err.message
    assert isinstance(orw.error_for(404, b'{"error":{"code":404,"message":"No endpoints found"}}', None), NoCapacity)
