"""The one contract every connector keeps, run against its provider's simulator over real HTTP.

What a connector cannot do it must say, as data, and asking for it must raise ``Unsupported``
naming the reason; everything else must work the same way on every provider.
"""

from __future__ import annotations

import msgspec
import pytest
from conftest import Served

from homeskillet.errors import HomeskilletError, ProviderAuthError
from homeskillet.providers.base import (
    FEATURES,
    Allocation,
    AllocationMetrics,
    Health,
    InferRequest,
    ProviderOffer,
    Release,
    Unsupported,
)


async def test_health_is_ok(served: Served) -> None:
    conn = served.pair.make_connector(served.url, served.pair.api_key)
    try:
        health = await conn.health()
        assert isinstance(health, Health)
        assert health.ok, health.detail
    finally:
        await conn.close()


async def test_unsupported_features_say_why(served: Served) -> None:
    conn = served.pair.make_connector(served.url, served.pair.api_key)
    try:
        assert set(conn.unsupported) <= set(FEATURES), "unknown feature names in 'unsupported'"
        for feature, why in conn.unsupported.items():
            assert why.strip(), f"{feature}: the reason is empty"
            with pytest.raises(Unsupported, match=why[:20]):
                conn.require(feature)
    finally:
        await conn.close()


async def test_quote_lists_offers_in_our_units(served: Served) -> None:
    conn = served.pair.make_connector(served.url, served.pair.api_key)
    try:
        if not conn.supports("quote"):
            pytest.skip(conn.unsupported["quote"])
        offers = await conn.quote(served.pair.want)
        assert offers, "a fault-free simulator must offer something"
        for o in offers:
            assert isinstance(o, ProviderOffer)
            assert o.offer_id
            assert o.usd_per_hour >= 0 and o.usd_per_mtok_in >= 0 and o.usd_per_mtok_out >= 0
            assert o.available >= 0 and o.count >= 1
    finally:
        await conn.close()


async def test_allocate_metrics_release(served: Served) -> None:
    pair = served.pair
    conn = pair.make_connector(served.url, pair.api_key)
    try:
        if not conn.supports("allocate"):
            pytest.skip(conn.unsupported["allocate"])
        before = pair.live_allocations(served.app) if pair.live_allocations else None
        alloc = await conn.allocate(pair.want)
        assert isinstance(alloc, Allocation)
        assert alloc.allocation_id and alloc.provider == pair.provider
        assert alloc.status == "running"
        if before is not None and pair.live_allocations:
            assert pair.live_allocations(served.app) == before + 1
        res = await conn.infer(InferRequest(strike_id="c-alloc", model=pair.model, prompt="say hi", max_tokens=8,
                                            allocation=alloc))
        assert res.text and res.completion_tokens > 0
        if conn.supports("metrics"):
            m = await conn.metrics(alloc)
            assert isinstance(m, AllocationMetrics) and m.allocation_id == alloc.allocation_id
        rel = await conn.release(alloc)
        assert isinstance(rel, Release) and rel.allocation_id == alloc.allocation_id
        assert rel.billed_usd is None or rel.billed_usd >= 0
        if before is not None and pair.live_allocations:
            assert pair.live_allocations(served.app) == before
    finally:
        await conn.close()


async def test_infer_on_the_pool(served: Served) -> None:
    """A strike with no allocation runs on the pool's standing allocation (made on first use)."""
    pair = served.pair
    conn = pair.make_connector(served.url, pair.api_key)
    try:
        before = pair.live_allocations(served.app) if pair.live_allocations else None
        req = InferRequest(strike_id="c-1", model=pair.model, prompt="What is a covenant?", max_tokens=16)
        first = await conn.infer(req)
        second = await conn.infer(InferRequest(strike_id="c-2", model=pair.model, prompt="And a strike?",
                                               max_tokens=16))
        for res in (first, second):
            assert res.text.strip()
            assert res.prompt_tokens > 0 and 0 < res.completion_tokens <= 16
            assert res.latency_ms >= 0
            assert res.billed_usd is None or res.billed_usd >= 0
    finally:
        await conn.close()
    if before is not None and pair.live_allocations:
        assert pair.live_allocations(served.app) == before, "close() must release the standing allocation"


async def test_stream_joins_to_text(served: Served) -> None:
    pair = served.pair
    conn = pair.make_connector(served.url, pair.api_key)
    try:
        if not conn.supports("stream"):
            pytest.skip(conn.unsupported["stream"])
        pieces = [p async for p in conn.stream(InferRequest(strike_id="c-s", model=pair.model, prompt="Stream this",
                                                            max_tokens=12))]
        assert pieces and "".join(pieces).strip()
    finally:
        await conn.close()


async def test_bad_key_is_refused_and_never_echoed(served: Served) -> None:
    pair = served.pair
    if not pair.api_key:
        pytest.skip(f"{pair.provider} takes no credential")
    bad = "hs-wrong-key-0123456789abcdef"
    conn = pair.make_connector(served.url, bad)
    try:
        with pytest.raises(HomeskilletError) as info:
            await conn.infer(InferRequest(strike_id="c-bad", model=pair.model, prompt="hi", max_tokens=4))
        assert isinstance(info.value, ProviderAuthError), repr(info.value)
        assert not info.value.retryable
        assert bad not in str(info.value) and bad not in repr(info.value.args)
    finally:
        await conn.close()


async def test_stream_result_hands_on_each_piece_then_the_usage(served: Served) -> None:
    """What a streamed strike runs: the pieces the pool host sends on as chunks, joined, are the
    result's text; a connector that cannot stream hands on its whole text as one piece."""
    pair = served.pair
    conn = pair.make_connector(served.url, pair.api_key)
    pieces: list[str] = []

    async def emit(piece: str) -> None:
        pieces.append(piece)

    try:
        req = InferRequest(strike_id="c-sr", model=pair.model, prompt="Stream this too", max_tokens=12)
        res = await conn.stream_result(req, emit)
        plain = await conn.infer(msgspec.structs.replace(req, strike_id="c-sr2"))
    finally:
        await conn.close()
    assert pieces and "".join(pieces) == res.text and res.text.strip()
    assert res.prompt_tokens > 0 and res.completion_tokens > 0
    if plain.billed_usd is not None:  # a provider that states its bill states it for a stream too
        assert res.billed_usd is not None and res.billed_usd >= 0
    if not conn.supports("stream"):
        assert len(pieces) == 1
