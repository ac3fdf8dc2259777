import pytest

from homeskillet.scoring import make_bid, rank
from homeskillet.wire import Bid, Cost, Covenant, Fallback, Offer, Qos, Refusal, Resources


def offer(**kw):
    base = dict(pool="p", provider="echo", pool_class="standard", models=["*"], vram_mb=24576, tflops=80,
                usd_per_mtok_in=1.0, usd_per_mtok_out=2.0, start_ms=10, ms_per_token=1, free_slots=4)
    return Offer(**{**base, **kw})


def covenant(**kw):
    return Covenant(name="c", resources=Resources(model="m", min_vram_mb=8192, min_tflops=10, **kw.pop("res", {})),
                    qos=Qos(**kw.pop("qos", {})), cost=Cost(**kw.pop("cost", {})),
                    fallback=Fallback(**kw.pop("fallback", {})))


def bid(o, c, **kw):
    return make_bid(o, c, prompt_tokens=100, max_tokens=100, quote_seq=1, expires_at_ms=0, **kw)


@pytest.mark.parametrize(
    ("o", "c", "term"),
    [
        (offer(vram_mb=4096), covenant(), "resources.min_vram_mb"),
        (offer(tflops=1), covenant(), "resources.min_tflops"),
        (offer(models=["other"]), covenant(), "resources.model"),
        (offer(accelerator="tpu"), covenant(res={"accelerator": "gpu"}), "resources.accelerator"),
        (offer(gpu_model="T4"), covenant(res={"gpu_models": ["H100"]}), "resources.gpu_models"),
        (offer(preemptible=True), covenant(), "qos.preemptible"),
        (offer(free_slots=0), covenant(), "capacity"),
        (offer(), covenant(cost={"max_usd_per_request": 1e-6}), "cost.max_usd_per_request"),
        (offer(usd_per_hour=9), covenant(cost={"max_usd_per_hour": 2}), "cost.max_usd_per_hour"),
        (offer(ms_per_token=1000), covenant(qos={"latency_target_ms": 100, "hard_deadline_ms": 5000}),
         "qos.hard_deadline_ms"),
    ],
)
def test_each_hard_term_refuses_by_name(o, c, term):
    r = bid(o, c)
    assert isinstance(r, Refusal) and r.term == term


def test_a_bid_prices_tokens_and_time():
    b = bid(offer(usd_per_hour=3.6), covenant())
    assert isinstance(b, Bid)
    assert b.price_usd == pytest.approx((100 * 1.0 + 100 * 2.0) / 1e6 + 3.6 * (b.predicted_total_ms / 1000) / 3600)


def test_degradation_only_when_allowed_and_exempt_from_resource_minimums():
    small = offer(models=["tiny"], vram_mb=0, tflops=0)
    c = covenant(fallback={"degrade_to": ["tiny"]})
    assert isinstance(bid(small, c), Refusal)
    b = bid(small, c, allow_degrade=True)
    assert isinstance(b, Bid) and b.model == "tiny"


def test_priority_trades_cost_for_latency():
    cheap_slow = bid(offer(pool="cheap", usd_per_mtok_out=1.0, ms_per_token=20), covenant())
    dear_fast = bid(offer(pool="fast", usd_per_mtok_out=4.0, ms_per_token=2), covenant())
    assert rank([cheap_slow, dear_fast], covenant(qos={"priority": 0}))[0].bid.pool == "cheap"
    assert rank([cheap_slow, dear_fast], covenant(qos={"priority": 100}))[0].bid.pool == "fast"


def test_unreliable_pools_lose_ties():
    good = bid(offer(pool="good", reliability=1.0), covenant())
    bad = bid(offer(pool="bad", reliability=0.5), covenant())
    ranked = rank([bad, good], covenant())
    assert [r.bid.pool for r in ranked] == ["good", "bad"] and "reliability" in ranked[0].why


def test_a_hosted_api_meets_resource_minimums_but_not_gpu_or_accelerator_terms():
    api = offer(accelerator="api", vram_mb=0, tflops=0)
    assert isinstance(bid(api, covenant()), Bid)  # the API sizes the hardware to the model
    assert bid(api, covenant(res={"gpu_models": ["H100"]})).term == "resources.gpu_models"
    assert bid(api, covenant(res={"accelerator": "gpu"})).term == "resources.accelerator"
