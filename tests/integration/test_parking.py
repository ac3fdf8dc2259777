"""The ``queue`` fallback step is durable: a parked query survives its orchestrator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import nats

from homeskillet.config import PoolSpec, Settings
from homeskillet.runtime import Runtime
from homeskillet.subjects import Subjects
from homeskillet.testing import echo_pool
from homeskillet.wire import Answer, ErrorReply, Query, encode

PARK = {"fallback": {"steps": ["standard", "queue"], "queue_max_wait_ms": 60000},
        "qos": {"hard_deadline_ms": 60000, "latency_target_ms": 60000}}


@asynccontextmanager
async def runtime(url: str, prefix: str, pools: list[PoolSpec], *, serve: bool = True) -> AsyncIterator[Runtime]:
    rt = Runtime(Settings(nats=[url], prefix=prefix, pools=pools, parked_claim_ttl_s=1.0), serve_queries=serve)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def parked_count(js: nats.js.JetStreamContext, prefix: str) -> int:
    info = await js.stream_info(Subjects(prefix).parked_stream)
    return info.state.messages


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def test_parked_query_survives_an_orchestrator_restart(nats_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    client = await nats.connect(nats_url)
    js = client.jetstream()
    try:
        first = Runtime(Settings(nats=[nats_url], prefix=prefix, pools=[], parked_claim_ttl_s=1.0))
        await first.start()
        query = Query(prompt="Will this survive?", overrides=PARK)
        pending = asyncio.create_task(client.request(f"{prefix}.query", encode(query), timeout=60))
        async def parked(n: int) -> bool:
            return await parked_count(js, prefix) == n

        await wait_for(lambda: parked(1))
        await first.stop()  # the orchestrator goes away with the query unanswered
        assert await parked_count(js, prefix) == 1, "the parked record must outlive its orchestrator"
        async with runtime(nats_url, prefix, []) as second:
            async def taken_over() -> bool:  # the first owner's claim expired; the second took the record
                return second.parking.taken_over > 0

            await wait_for(taken_over)
            assert not pending.done()
            async with runtime(nats_url, prefix, [echo_pool("echo/back", "standard")], serve=False):
                msg = await asyncio.wait_for(pending, 30)  # capacity is back: the caller gets its answer
            answer = msgspec.json.decode(msg.data, type=Answer)
            assert answer.text == "echo: Will this survive?"
            assert answer.fragments[0].pool == "echo/back" and answer.fragments[0].step.startswith("queue")
            await wait_for(lambda: parked(0))
    finally:
        await client.close()


async def test_a_queue_that_times_out_ends_in_an_explicit_error_and_leaves_no_record(nats_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    client = await nats.connect(nats_url)
    try:
        async with runtime(nats_url, prefix, []):
            over = {"fallback": {"steps": ["standard", "queue"], "queue_max_wait_ms": 300}}
            msg = await client.request(f"{prefix}.query", encode(Query(prompt="nobody home", overrides=over)),
                                       timeout=10)
            assert msg.headers and msg.headers.get("Nats-Service-Error-Code") == "503"
            err = msgspec.json.decode(msg.data, type=ErrorReply)
            assert err.code == "no_pool" and any("queue" in t for t in err.tried)
            async with asyncio.timeout(10):  # deleted after the reply went out (fire-and-forget)
                while await parked_count(client.jetstream(), prefix):
                    await asyncio.sleep(0.05)
    finally:
        await client.close()

