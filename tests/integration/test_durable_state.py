"""State survives a node, and a live owner keeps what it serves.

On a cluster every stream and KV bucket is made with three replicas, and one left with a single
replica by an older deployment is scaled up at start. A query served slowly by a live orchestrator
is never taken over by a peer (its liveness key is renewed on its own, whatever the query does).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import nats
import pytest
from nats.js.api import KeyValueConfig

from homeskillet.config import Settings, TenantSettings
from homeskillet.natsd import NatsCluster, wait_for_jetstream
from homeskillet.runtime import Runtime
from homeskillet.subjects import Subjects
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Answer, Query, encode

PARK = {"fallback": {"steps": ["standard", "queue"], "queue_max_wait_ms": 30000},
        "qos": {"hard_deadline_ms": 30000, "latency_target_ms": 30000}}
TENANTS = {"acme": TenantSettings(daily_usd=5.0, requests_per_minute=1000)}


async def test_every_stream_and_bucket_has_three_replicas_on_a_cluster(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(nats_cluster.urls[1])
    try:
        await wait_for_jetstream(nc)
        js = nc.jetstream()
        prefix = f"t{uuid.uuid4().hex[:10]}"
        # An older deployment left the ledger with one replica: it is scaled up, not recreated.
        old = await js.create_key_value(KeyValueConfig(bucket=f"{prefix}-ledger", history=1, replicas=1))
        day = time.strftime("%Y-%m-%d", time.gmtime())
        await old.put("acme", msgspec.json.encode({"day": day, "month": day[:7], "day_usd": 0.25, "month_usd": 0.25}))
        settings = Settings(nats=nats_cluster.urls, prefix=prefix, pools=[echo_pool()], tenants=TENANTS)
        async with Runtime(settings) as rt:
            answer = await rt.ask(prompt="replicated?", tenant="acme")
            assert answer.text == "echo: replicated?"
            names = {Subjects(prefix).parked_stream, f"KV_{prefix}-ledger", f"KV_{prefix}-limits",
                     f"KV_hs-parked-claims-{prefix}"}
            for name in names:
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, f"{name} has {info.config.num_replicas} replicas"
            status = await rt.orchestrator.budgets.status("acme")  # type: ignore[union-attr]
            assert status.spent_day_usd > 0.25  # the old bucket's value was kept through the migration
    finally:
        await nc.close()


async def test_a_single_server_keeps_one_replica(nats_url: str) -> None:
    async with start_runtime(nats_url, tenants=TENANTS) as rt:
        assert rt.nc is not None
        info = await rt.nc.jetstream().stream_info(f"KV_{rt.settings.prefix}-ledger")
        assert info.config.num_replicas == 1


@pytest.mark.parametrize("parked", [False, True], ids=["served-slowly", "parked-then-served-slowly"])
async def test_a_live_but_slow_owner_is_never_taken_over(nats_url: str, parked: bool) -> None:
    """The owner serves a query for several claim TTLs while a peer sweeps: one answer, no takeover.
    ``parked``: the query first waits in the queue step (no capacity), then a slow pool serves it."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    ttl = 0.6
    slow = echo_pool("echo/slow", start_ms=0, options={"delay_ms": 3000})

    def settings(pools: list) -> Settings:  # type: ignore[type-arg]
        return Settings(nats=[nats_url], prefix=prefix, pools=pools, parked_claim_ttl_s=ttl)

    client = await nats.connect(nats_url)
    try:
        async with Runtime(settings([] if parked else [slow])) as owner, Runtime(settings([])) as peer:
            inbox = client.new_inbox()
            replies: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()
            sub = await client.subscribe(inbox, cb=replies.put)
            # Only the owner serves queries: the peer's ingress stops so the one query lands there.
            await peer.ingress.stop()
            query = Query(prompt="slowly", tenant="t", overrides=PARK if parked else None)
            await client.publish(f"{prefix}.query", encode(query), reply=inbox)
            if parked:
                while peer.parking.sweeps < 4 or not owner.orchestrator.parked:
                    await asyncio.sleep(0.05)
                await owner.add_pool(slow)  # capacity arrives; the owner serves it, slowly
            first = await asyncio.wait_for(replies.get(), 20)
            answer = msgspec.json.decode(first.data, type=Answer)
            assert answer.text == "echo: slowly"
            assert peer.parking.sweeps >= 4, "the peer swept while the query was served"
            assert peer.parking.taken_over == 0 and owner.parking.taken_over == 0
            await client.flush()
            sweeps = peer.parking.sweeps
            while peer.parking.sweeps < sweeps + 2:  # two more sweeps after the answer: still nothing
                await asyncio.sleep(0.05)
            assert replies.empty(), "the query was answered twice"
            assert peer.parking.taken_over == 0
            await sub.unsubscribe()
    finally:
        await client.close()
