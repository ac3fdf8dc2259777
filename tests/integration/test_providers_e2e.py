"""Preemption and the failover chain, end to end: real connectors against their simulators over
real HTTP, a real nats-server, pool hosts and the orchestrator in a Runtime.

Each test changes a simulator's state the way the provider would change (an eviction, an outage,
a pool that fills up) and checks what the answer, the ledger and the provider's own records say.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e_world import (
    MODEL,
    VAST_OFFERS,
    active_leases,
    book,
    hostedai,
    hostedai_pool,
    local_pool,
    sim_config,
    vast_hourly,
    vast_pool,
    vastai,
    wait_until,
)

from homeskillet.errors import NoPoolError
from homeskillet.testing import start_runtime

NANO = 2e-9  # answers report USD rounded to the nano-dollar (money.py); the ledger keeps full precision


def chain(*steps: str, primary: str = "standard", ceiling: float | None = None, wait_ms: int = 20_000,
          **more: Any) -> dict[str, Any]:
    """Covenant overrides for gemma-2b: a primary pool class, then ``steps``."""
    over: dict[str, Any] = {"resources": {"pool_class": primary},
                            "fallback": {"steps": list(steps), "queue_max_wait_ms": wait_ms,
                                         "degrade_to": ["smollm2-135m"]},
                            "qos": {"latency_target_ms": 20_000, "hard_deadline_ms": 30_000}, **more}
    if ceiling is not None:
        over["cost"] = {"max_usd_per_request": ceiling}
    return over


# --- preemption -------------------------------------------------------------------------------------


async def test_an_eviction_mid_inference_is_restruck_and_charged_as_the_provider_bills(nats_url: str) -> None:
    """A hosted.ai preemptible allocation evicted mid-inference: the fragment is re-struck on the
    standard pool; the ledger holds the answer once plus exactly what hosted.ai billed for the
    evicted allocation (every started second at the preemptible pool's price)."""
    with hostedai(sim_config(preempt_rate=1.0)) as (sim, url):
        pools = [hostedai_pool(url, "preemptible"), hostedai_pool(url, "standard")]
        async with start_runtime(nats_url, pools, live_interval_ms=60_000) as rt:
            answer = await rt.ask(prompt="Evict me if you must", covenant=MODEL, tenant="acme",
                                  overrides=chain("standard", "fail", primary="preemptible"))
            [frag] = answer.fragments
            assert frag.pool == "hostedai/standard-us-east" and frag.step == "standard"
            assert any(t.startswith("hostedai/preemptible-us-east") and "evicted" in t for t in frag.tried), frag.tried
            assert answer.text.startswith(f"[{MODEL}]")  # the simulator's text, through the whole stack

            [evicted] = [lease for lease in sim.leases.values() if lease.view.status == "preempted"]
            assert evicted.view.pool_id == "preemptible-us-east" and evicted.view.billed_usd > 0
            report = await rt.ledger_report("acme")
            assert report.settlements == 2  # the evicted strike and the one that served
            assert report.by_pool["hostedai/preemptible-us-east"] == pytest.approx(evicted.view.billed_usd, abs=NANO)
            assert report.by_pool["hostedai/standard-us-east"] == pytest.approx(answer.cost_usd, abs=NANO)
            assert report.spent_usd["acme"] == pytest.approx(answer.cost_usd + evicted.view.billed_usd, abs=NANO)
            assert sim.counters["inferences"] == 1  # one inference finished: the answer's



async def test_an_outbid_vastai_instance_is_restruck_and_charged_per_second_at_its_bid(nats_url: str) -> None:
    """A Vast.ai interruptible rental outbid mid-inference (all three states "stopped"): re-struck
    on hosted.ai; the evicted part is charged per started second at the instance's rate (the bid
    plus its disk)."""
    offer = VAST_OFFERS[0]
    with vastai(sim_config(preempt_rate=1.0, extra={"offers": VAST_OFFERS})) as (vsim, vurl), \
            hostedai() as (_, hurl):
        spot = vast_pool(vurl, name="vastai/rtx4090-spot", pool_class="preemptible", preemptible=True,
                         options={"interruptible": True})
        async with start_runtime(nats_url, [spot, hostedai_pool(hurl, "standard")], live_interval_ms=60_000) as rt:
            answer = await rt.ask(prompt="Outbid me", covenant=MODEL, tenant="acme",
                                  overrides=chain("standard", "fail", primary="preemptible"))
            [frag] = answer.fragments
            assert frag.pool == "hostedai/standard-us-east" and frag.step == "standard"
            assert any(t.startswith("vastai/rtx4090-spot") and "outbid" in t for t in frag.tried), frag.tried
            assert (vsim.counters["outbid"], vsim.counters["preempted_inference"]) == (1, 1)
            assert vsim.instances == {} and vsim.counters["destroyed"] == 1  # the stopped box was destroyed
            report = await rt.ledger_report("acme")
            charged, rate = report.by_pool["vastai/rtx4090-spot"], vast_hourly(offer, offer["min_bid"])
            seconds = charged * 3600 / rate  # whole seconds at the instance's rate: the bid plus its disk
            assert round(seconds) >= 1 and abs(seconds - round(seconds)) < 1e-6, seconds
            assert vsim.settled_usd > 0  # Vast's own meter ran for the rental (create to destroy, disk included)
            assert report.spent_usd["acme"] == pytest.approx(answer.cost_usd + charged, abs=NANO)

# --- the failover chain: primary → fallback → local → queue → error ----------------------------------
# Pools predict 1 s per strike, so a pool's bid is its hourly price / 3600: hosted.ai standard
# $0.000222, premium $0.000667, Vast.ai RTX 4090 $0.000113, H100 $0.000696. CEILING sits between.
CEILING = 0.0004


async def test_primary_in_outage_fails_over_to_vastai_and_passes_over_a_pool_above_the_ceiling(nats_url: str) -> None:
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        pools = [hostedai_pool(hurl, "standard"), hostedai_pool(hurl, "premium"), vast_pool(vurl)]
        async with start_runtime(nats_url, pools, live_interval_ms=60_000) as rt:
            over = chain("premium", "marketplace", "local", "queue", "fail", ceiling=CEILING)
            first = await rt.ask(prompt="Who serves first?", covenant=MODEL, overrides=over)
            assert first.fragments[0].pool == "hostedai/standard-us-east" and first.fragments[0].tried == []

            hsim.config.faults.outage = True  # hosted.ai answers 503 to everything from now on
            answer = await rt.ask(prompt="And during the outage?", covenant=MODEL, overrides=over)
            [frag] = answer.fragments
            assert (frag.pool, frag.step) == ("vastai/rtx4090", "marketplace")
            assert any(t.startswith("hostedai/standard-us-east") and "503" in t for t in frag.tried), frag.tried
            # premium was never struck: its bid is over the ceiling, and the answer says so by name
            assert any(t.startswith("step premium: cost.max_usd_per_request") for t in frag.tried), frag.tried
            assert frag.cost_usd <= CEILING and frag.kept
            assert len(vsim.instances) == 1  # the Vast.ai rental that served it

            report = await rt.ledger_report()
            assert set(report.by_pool) == {"hostedai/standard-us-east", "vastai/rtx4090"}
            # the 503 cost nothing
            assert report.by_pool["hostedai/standard-us-east"] == pytest.approx(first.cost_usd, abs=NANO)
            assert active_leases(hsim, "premium-us-east") == []


async def test_no_remote_capacity_falls_back_to_the_local_pool_with_the_degraded_model(nats_url: str) -> None:
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        pools = [hostedai_pool(hurl, "standard"), vast_pool(vurl), local_pool()]
        async with start_runtime(nats_url, pools, live_interval_ms=60_000) as rt:
            hsim.pools["standard-us-east"].capacity = 0  # every vGPU taken: allocations get 409
            vsim.config.faults.refuse_rate = 1.0  # every rental refused: the ask is gone
            answer = await rt.ask(prompt="Anyone at all?", covenant=MODEL,
                                  overrides=chain("marketplace", "local", "fail", ceiling=CEILING))
            [frag] = answer.fragments
            assert (frag.pool, frag.step, frag.model, frag.degraded) == ("echo/local", "local", "smollm2-135m", True)
            assert answer.text == "echo: Anyone at all?"
            tried = " | ".join(frag.tried)
            assert "hostedai/standard-us-east" in tried and "insufficient_capacity" in tried, tried
            assert "vastai/rtx4090" in tried and "could be rented" in tried, tried
            assert active_leases(hsim) == [] and vsim.instances == {}
            assert vsim.counters["refused"] == 1
            assert set((await rt.ledger_report()).by_pool) == {"echo/local"}  # failed strikes charged nothing


async def test_a_parked_fragment_is_served_when_the_provider_has_capacity_again(nats_url: str) -> None:
    """The queue step: hosted.ai is sold out, so its pool stops quoting (live refresh); the fragment
    parks durably; when vGPUs are freed the next live refresh brings the pool back and serves it."""
    with hostedai() as (hsim, hurl):
        pool = hostedai_pool(hurl, "standard", options={"quote_ttl_s": 0.0})
        async with start_runtime(nats_url, [pool], live_interval_ms=100, quote_interval_ms=50,
                                 quote_ttl_ms=400) as rt:
            name = "hostedai/standard-us-east"
            hsim.pools["standard-us-east"].capacity = 0
            await wait_until(lambda: name not in book(rt), "the sold-out pool to leave the book")

            pending = asyncio.create_task(rt.ask(prompt="Wait for me", covenant=MODEL,
                                                 overrides=chain("queue", "fail")))
            await wait_until(lambda: bool(rt.orchestrator.parked), "the fragment to park")
            js = rt.nc.jetstream()
            assert (await js.stream_info(rt.subjects.parked_stream)).state.messages == 1  # durable
            assert not pending.done() and active_leases(hsim) == []

            hsim.pools["standard-us-east"].capacity = 8  # capacity returns
            answer = await asyncio.wait_for(pending, 20)
            [frag] = answer.fragments
            assert (frag.pool, frag.step) == (name, "queue→standard")
            assert any("step standard: capacity" in t and "no capacity" in t for t in frag.tried), frag.tried
            assert len(active_leases(hsim, "standard-us-east")) == 1  # served on a real allocation
            async with asyncio.timeout(10):  # the record is deleted once answered (fire-and-forget)
                while (await js.stream_info(rt.subjects.parked_stream)).state.messages:
                    await asyncio.sleep(0.05)


async def test_the_end_of_the_chain_is_an_error_naming_the_unmet_terms(nats_url: str) -> None:
    """Every step fails, each for its own reason; the ceiling holds at every step, including the
    retries after the queue: the over-priced H100 is never rented."""
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        pools = [hostedai_pool(hurl, "standard"), vast_pool(vurl, name="vastai/h100", gpu="H100 SXM"), local_pool()]
        async with start_runtime(nats_url, pools, live_interval_ms=60_000) as rt:
            hsim.config.faults.outage = True
            over = chain("marketplace", "local", "queue", "fail", ceiling=CEILING, wait_ms=600)
            over["fallback"]["degrade_to"] = []  # the local pool's small model is not allowed here
            with pytest.raises(NoPoolError) as info:
                await rt.ask(prompt="Impossible?", covenant=MODEL, overrides=over)
            err = info.value
            assert "cost.max_usd_per_request" in err.message and "vastai/h100" in err.message
            assert "resources.model" in err.message  # the local pool does not serve gemma-2b
            tried = " | ".join(err.tried)
            assert "hostedai/standard-us-east" in tried and "503" in tried, tried
            assert "step marketplace: cost.max_usd_per_request" in tried, tried
            assert "queue: no capacity within 600 ms" in tried, tried
            assert vsim.instances == {} and vsim.counters.get("created", 0) == 0
            assert (await rt.ledger_report()).by_pool == {}
