"""Pool agents bid from the provider's live state: price, capacity, warm models, health."""

from __future__ import annotations

from homeskillet.pools import LiveState, PoolState, live_from
from homeskillet.testing import echo_pool
from homeskillet.wire import Health, ProviderOffer


def test_cheapest_offer_sets_the_price_and_availability_adds_up() -> None:
    offers = [ProviderOffer(offer_id="a", usd_per_hour=3.1, available=2, warm_models=["m1"]),
              ProviderOffer(offer_id="b", usd_per_hour=2.4, available=1)]
    live = live_from(offers, Health(ok=True, warm_models=["m2"]), at_ms=1)
    assert live.usd_per_hour == 2.4 and live.available == 3 and live.warm_models == ("m1", "m2")


def test_live_price_replaces_the_spec_and_bumps_the_quote_sequence() -> None:
    state = PoolState(echo_pool("vastai/h100", usd_per_hour=2.0))
    assert state.offer().usd_per_hour == 2.0
    state.live = LiveState(usd_per_hour=2.75, warm_models=("qwen-14b",))
    offer = state.offer()
    assert offer.usd_per_hour == 2.75 and "qwen-14b" in offer.warm_models
    assert state.sold_out() is None


def test_sold_out_or_unhealthy_providers_do_not_quote() -> None:
    state = PoolState(echo_pool("runpod/a100"))
    state.live = live_from([], None, at_ms=1)
    assert state.sold_out() == "the provider has no capacity that fits"
    state.live = LiveState(healthy=False, detail="HTTP 503")
    assert "HTTP 503" in (state.sold_out() or "")


def test_a_misspelt_connector_option_is_named() -> None:
    import pytest

    from homeskillet.errors import HomeskilletError
    from homeskillet.runtime import make_connector

    with pytest.raises(HomeskilletError, match=r"pool echo/standard: bad options .*'dely_ms'"):
        make_connector(echo_pool(options={"dely_ms": 1}))


async def test_a_failed_start_stops_what_had_started(nats_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    import pytest

    from homeskillet.config import Settings
    from homeskillet.errors import HomeskilletError
    from homeskillet.runtime import Runtime

    before = {t.ident for t in threading.enumerate()}
    bad = tmp_path / "covenants"
    bad.mkdir()
    (bad / "broken.toml").write_text("[resources]\nmodel = 1\n")  # fails after the actors and pools started
    rt = Runtime(Settings(nats=[nats_url], prefix="tfailstart", pools=[echo_pool()], covenants_dir=str(bad)))
    with pytest.raises(HomeskilletError):
        await rt.start()
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, f"threads left running after a failed start: {left}"
