"""Pool hosts bid from live provider state: prices, capacity, health and warm models come from the
simulators over real HTTP, through each pool host's live refresh (``live_interval_ms``), into the
standing quotes the broker awards from.
"""

from __future__ import annotations

import time

import ollama
from e2e_world import (
    MODEL,
    VAST_OFFERS,
    book,
    hostedai,
    hostedai_pool,
    vast_hourly,
    vast_pool,
    vastai,
    wait_until,
)
from toy_model import get_model

from homeskillet.config import PoolSpec
from homeskillet.node import create_node_app
from homeskillet.testing import serve_asgi, start_runtime
from homeskillet.wire import Query

LIVE_MS, QUOTE_MS = 1000, 100
FAST = {"live_interval_ms": LIVE_MS, "quote_interval_ms": QUOTE_MS, "quote_ttl_ms": 400}
SAME_CLASS = {"resources": {"pool_class": "standard"}, "fallback": {"steps": ["fail"]},
              "qos": {"latency_target_ms": 20_000, "hard_deadline_ms": 30_000}}


async def test_standing_quotes_follow_the_providers_prices_within_one_live_interval(nats_url: str) -> None:
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        pools = [hostedai_pool(hurl, "standard", options={"quote_ttl_s": 0.0}), vast_pool(vurl)]
        async with start_runtime(nats_url, pools, **FAST) as rt:
            hosted, vast = "hostedai/standard-us-east", "vastai/rtx4090"
            await wait_until(lambda: {hosted, vast} <= set(book(rt)), "both pools to quote")
            assert book(rt)[hosted].usd_per_hour == 0.80
            assert book(rt)[vast].usd_per_hour == vast_hourly(VAST_OFFERS[0])
            seq_before = {q.offer.pool: q.seq for q in rt.negotiator.view.quotes}

            t0 = time.monotonic()
            hsim.pools["standard-us-east"].price_per_hour = 1.10  # the provider reprices
            vsim.offers[0].dph_base = 0.55  # the market moves
            await wait_until(lambda: book(rt)[hosted].usd_per_hour == 1.10
                             and book(rt)[vast].usd_per_hour == vast_hourly(VAST_OFFERS[0], 0.55),
                             "the new prices in the book", timeout=10)
            elapsed = time.monotonic() - t0
            # One live refresh, then the next quote; the rest is slack for a loaded machine.
            assert elapsed < (LIVE_MS + QUOTE_MS) / 1000 + 1.0, elapsed
            seq_after = {q.offer.pool: q.seq for q in rt.negotiator.view.quotes}
            assert all(seq_after[p] > seq_before[p] for p in (hosted, vast))  # old quotes re-validate

            # Bids come from the new prices (pools predict 1 s a strike: the hourly price / 3600).
            quote = await rt.gateway.quote(Query(prompt="What does it cost now?", covenant=MODEL, overrides=SAME_CLASS))
            assert quote.fragments[0].winner is not None and quote.fragments[0].winner.pool == hosted
            assert abs(quote.fragments[0].winner.price_usd - 1.10 / 3600) < 1e-9


async def test_a_sold_out_or_unhealthy_provider_drops_out_of_the_book_and_the_next_pool_wins(nats_url: str) -> None:
    """hosted.ai (cheaper here) wins while it can; sold out, or down, it leaves the book and Vast.ai
    wins without a failed strike; when it recovers it wins again."""
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        hsim.pools["standard-us-east"].price_per_hour = 0.30  # under Vast.ai's $0.41/h
        pools = [hostedai_pool(hurl, "standard", options={"quote_ttl_s": 0.0}), vast_pool(vurl, pool_class="standard")]
        async with start_runtime(nats_url, pools, **FAST) as rt:
            hosted, vast = "hostedai/standard-us-east", "vastai/rtx4090"

            async def served_by(prompt: str) -> str:
                answer = await rt.ask(prompt=prompt, covenant=MODEL, overrides=SAME_CLASS)
                assert answer.fragments[0].tried == []  # chosen from the book, never a failed strike
                return answer.fragments[0].pool

            hsim.pools["standard-us-east"].capacity = 0  # sold out
            await wait_until(lambda: hosted not in book(rt), "sold-out hosted.ai to leave the book")
            assert vast in book(rt)
            assert await served_by("while hosted.ai is sold out") == vast
            hsim.pools["standard-us-east"].capacity = 8
            await wait_until(lambda: hosted in book(rt), "hosted.ai to quote again")
            assert await served_by("hosted.ai has vGPUs again") == hosted

            hsim.config.faults.outage = True  # unhealthy: every call answers 503
            await wait_until(lambda: hosted not in book(rt), "unhealthy hosted.ai to leave the book")
            assert await served_by("during the outage") == vast
            hsim.config.faults.outage = False
            await wait_until(lambda: hosted in book(rt), "recovered hosted.ai to quote again")
            assert await served_by("after the outage") == hosted
            assert hsim.counters["allocations_created"] == 1 and len(vsim.instances) == 1  # held ones were reused


async def test_a_pool_holding_the_last_fitting_machine_keeps_quoting(nats_url: str) -> None:
    """The machine a pool has rented serves its strikes, so it counts as capacity even when the
    provider has nothing else left to rent."""
    with hostedai() as (hsim, hurl), vastai() as (vsim, vurl):
        hsim.pools["standard-us-east"].capacity = 1
        pools = [hostedai_pool(hurl, "standard", options={"quote_ttl_s": 0.0}), vast_pool(vurl)]
        async with start_runtime(nats_url, pools, **FAST) as rt:
            for name, cls in (("hostedai/standard-us-east", "standard"), ("vastai/rtx4090", "marketplace")):
                over = {**SAME_CLASS, "resources": {"pool_class": cls}}
                assert (await rt.ask(prompt="take it", covenant=MODEL, overrides=over)).fragments[0].pool == name
                host = rt.hosts[name]
                for _ in range(2):  # two refreshes, so the second surely began after the rental
                    seen = int(time.time() * 1000)
                    await wait_until(lambda h=host, t=seen: h.live is not None and h.live.at_ms > t,
                                     "a live refresh")
                assert host.live is not None and host.live.available == 1, host.live  # the provider has none left
                assert name in book(rt), f"{name} dropped out while holding a machine that serves"
                again = await rt.ask(prompt="still there?", covenant=MODEL, overrides=over)
                assert again.fragments[0].pool == name and again.fragments[0].tried == []
            assert hsim.counters["allocations_created"] == 1 and len(vsim.instances) == 1


async def test_warm_models_reported_by_an_ollama_node_appear_in_its_offer(nats_url: str) -> None:
    names = ["smollm2-135m", "smollm2-135m-b"]
    app = create_node_app(get_model(), models=names)  # the toy test model under the real model's names
    with serve_asgi(app, "/api/version") as url:
        spec = PoolSpec(name="ollama/node1", provider="ollama", pool_class="local", models=names,
                        accelerator="cpu", options={"base_url": url})
        async with start_runtime(nats_url, [spec], **FAST) as rt:
            await wait_until(lambda: "ollama/node1" in book(rt), "the node to quote")
            assert book(rt)["ollama/node1"].warm_models == []
            # Another client loads a model on the node (an empty prompt loads it, as in Ollama).
            await ollama.AsyncClient(host=url).generate(model="smollm2-135m-b", prompt="")
            await wait_until(lambda: book(rt)["ollama/node1"].warm_models == [names[1], f"{names[1]}:latest"],
                             "the node's warm model in its standing quote", timeout=5)
            # ... and the broker scores it as warm (the bid for the warm model gets the warm bonus).
            quote = await rt.gateway.quote(Query(prompt="which model is warm?", covenant="smollm2-135m",
                                                 overrides={"resources": {"model": "smollm2-135m-b"}}))
            winner = quote.fragments[0].winner
            assert winner is not None and winner.pool == "ollama/node1" and winner.why.endswith(", warm"), winner
