"""The worst case a budget holds for a strike, and the cap that keeps every charge inside it."""

from __future__ import annotations

import pytest

from homeskillet.orchestrator import cap_charge
from homeskillet.scoring import hold_usd, price_usd
from homeskillet.telemetry import POOL_LOSS_USD
from homeskillet.testing import echo_pool
from homeskillet.wire import StrikeCancelled, StrikeFailure, StrikeOk, StrikePreemption


def test_hold_covers_every_price_model() -> None:
    hourly = echo_pool(usd_per_mtok_in=0.0, usd_per_mtok_out=0.0, usd_per_hour=3.6)
    assert hold_usd(hourly, 100, 256, 30.0) == pytest.approx(0.03)  # $0.001/s for the 30 s left
    assert hold_usd(hourly, 100, 256, -1.0) == 0.0  # no time left: nothing can run
    tokens = echo_pool(usd_per_mtok_in=1.0, usd_per_mtok_out=2.0, usd_per_hour=0.0)
    assert hold_usd(tokens, 100, 256, 30.0) == pytest.approx((100 + 2 * 256) / 1e6)
    # Whatever the strike really does within its deadline and max_tokens costs no more.
    mixed = echo_pool(usd_per_mtok_in=1.0, usd_per_mtok_out=2.0, usd_per_hour=3.6)
    worst = hold_usd(mixed, 100, 256, 30.0)
    assert all(price_usd(mixed, 100, c, s) <= worst for c in (0, 1, 255, 256) for s in (0.0, 1.0, 29.99, 30.0))


def test_charge_is_capped_at_the_hold_and_the_excess_is_the_pool_loss() -> None:
    before = POOL_LOSS_USD.labels(pool="p")._value.get()
    ok = StrikeOk(strike_id="s", pool="p", model="m", text="", prompt_tokens=1, completion_tokens=1,
                  cost_usd=0.5, latency_ms=1.0)
    assert cap_charge(ok, 0.2).cost_usd == 0.2  # type: ignore[union-attr]
    assert cap_charge(ok, 0.5) is ok  # within the hold: untouched
    pre = StrikePreemption(strike_id="s", pool="p", message="evicted", billed_usd=0.3)
    assert cap_charge(pre, 0.1).billed_usd == 0.1  # type: ignore[union-attr]
    cancelled = StrikeCancelled(strike_id="s", pool="p", message="hedge lost", billed_usd=0.3)
    assert cap_charge(cancelled, 0.0).billed_usd == 0.0  # type: ignore[union-attr]
    failed = StrikeFailure(strike_id="s", pool="p", code="x", message="y")
    assert cap_charge(failed, 0.0) is failed
    assert POOL_LOSS_USD.labels(pool="p")._value.get() - before == pytest.approx(0.3 + 0.2 + 0.3)
