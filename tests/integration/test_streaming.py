"""Streaming end to end on the strike path: chunks over NATS beside the heartbeats, passed on by the
orchestrator in answer order, and what failover, preemption, cancellation and idempotency do
mid-stream. The echo engine is held on an event the test releases, so "the first chunk came
before generation ended" is shown by ordering, never by timing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from prometheus_client import REGISTRY

from homeskillet.analyze import analyze
from homeskillet.errors import Preempted, StreamInterrupted
from homeskillet.providers.echo import EchoConnector
from homeskillet.runtime import Runtime
from homeskillet.streaming import streamed
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import (
    Answer,
    CancelStrike,
    Query,
    Strike,
    StrikeCancelled,
    StrikeChunk,
    StrikeOk,
    decode_strike_reply,
    encode,
)


def echo(rt: Runtime, pool: str = "echo/standard") -> EchoConnector:
    conn = rt.hosts[pool].connector
    assert isinstance(conn, EchoConnector)
    return conn


def running(rt: Runtime, pool: str = "echo/standard") -> int:
    return rt.hosts[pool].active  # strikes admitted at the pool and not finished


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for a condition another task makes true (bounded: a stuck one fails, naming it)."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.002)
    assert cond(), what


def chunks_at_dispatcher(rt: Runtime) -> list[int]:
    """Characters of each streaming strike the orchestrator has received (in flight only)."""
    return [p.emitted for p in rt.dispatcher._pending.values()]


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    async with start_runtime(nats_url, [echo_pool()]) as runtime:
        yield runtime


async def test_strike_streams_chunks_before_its_result(rt: Runtime) -> None:
    gate = echo(rt).hold(after=1)
    cov = rt.orchestrator.covenants.resolve(Query(prompt="x"))
    frag = analyze(Query(query_id="q1", prompt="one two three four"), cov)[0]
    strike = Strike(strike_id=uuid.uuid4().hex, query_id="q1", tenant="t", covenant_id=cov.covenant_id,
                    pool="echo/standard", fragment=frag, model=frag.model, max_price_usd=1.0, stream=True)
    nc = await nats.connect(rt.nats_urls[0])
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(rt.subjects.strike("echo/standard"), encode(strike), reply=inbox)
    first = decode_strike_reply((await sub.next_msg(timeout=10)).data)
    assert isinstance(first, StrikeChunk) and first.offset == 0 and first.text == "echo: "
    assert running(rt) == 1  # the engine is still generating (held on the gate)
    gate.set()
    replies = []
    while not isinstance(replies[-1] if replies else None, StrikeOk):
        msg = await sub.next_msg(timeout=10)
        if not (msg.headers or {}).get("Hs-Heartbeat"):
            replies.append(decode_strike_reply(msg.data))
    await nc.close()
    *chunks, ok = replies
    assert isinstance(ok, StrikeOk) and ok.ttft_ms is not None and ok.completion_tokens > 0
    assert all(isinstance(c, StrikeChunk) for c in chunks)
    assert first.text + "".join(c.text for c in chunks) == ok.text == "echo: one two three four"  # type: ignore[union-attr]
    assert [c.offset for c in chunks] == [6, 10, 14, 20]  # type: ignore[union-attr]


async def test_streamed_query_sends_text_while_the_strike_runs(rt: Runtime) -> None:
    gate = echo(rt).hold(after=2)
    count = REGISTRY.get_sample_value("hs_time_to_first_token_seconds_count") or 0.0
    text, answer = "", None
    async for item in streamed(lambda sink: rt.gateway.ask(Query(prompt="stream me now please"), stream=sink)):  # type: ignore[union-attr]
        if isinstance(item, Answer):
            answer = item
            break
        text += item
        if not gate.is_set():
            assert running(rt) == 1  # text arrives while the engine is still generating
            if text == "echo: stream ":  # two words out: let it finish
                gate.set()
    assert answer is not None and gate.is_set()
    assert text == answer.text == "echo: stream me now please"
    assert answer.ttft_ms is not None and 0 < answer.ttft_ms <= answer.latency_ms
    assert answer.strategy == "whole+single+fuse:ordered"
    assert REGISTRY.get_sample_value("hs_time_to_first_token_seconds_count") == count + 1


async def test_ordered_parts_stream_fragment_by_fragment(rt: Runtime) -> None:
    """Part 2's chunks wait until part 1 has finished; then it streams live."""
    conn = echo(rt)
    gate = conn.hold(after=1)  # every strike holds after its first word: both parts are mid-stream
    sent: list[str] = []
    prompt = "What is the capital of France? And what is the capital of Spain?"
    task = asyncio.create_task(rt.gateway.ask(Query(prompt=prompt), stream=sent.append))  # type: ignore[union-attr]
    await until(lambda: sorted(chunks_at_dispatcher(rt)) == [6, 6], "both strikes' first words reached us")
    assert "".join(sent) == "1. What is the capital of France?\necho: "
    assert "2. " not in "".join(sent)  # part 2's first word is buffered, not sent
    gate.set()
    answer = await asyncio.wait_for(task, 10)
    assert "".join(sent) == answer.text
    assert answer.text.startswith("1. What is the capital of France?\necho: What is the capital of France?")
    assert "\n\n2. " in answer.text and len(answer.fragments) == 2


async def test_failover_before_the_first_chunk_is_invisible(nats_url: str) -> None:
    pools = [echo_pool("echo/a", "standard", usd_per_mtok_out=0.01), echo_pool("echo/b", "premium")]
    async with start_runtime(nats_url, pools) as rt:
        echo(rt, "echo/a").fail_after = 0
        echo(rt, "echo/a").fail_with = Preempted("echo/a: evicted (test control)")
        sent: list[str] = []
        answer = await rt.gateway.ask(Query(prompt="survive this", covenant="gemma-2b"),  # type: ignore[union-attr]
                                      stream=sent.append)
    assert answer.fragments[0].pool == "echo/b" and any("echo/a" in t for t in answer.fragments[0].tried)
    assert "".join(sent) == answer.text == "echo: survive this"


async def test_preemption_after_a_chunk_is_an_explicit_error_not_a_second_answer(nats_url: str) -> None:
    pools = [echo_pool("echo/a", "standard", usd_per_mtok_out=0.01), echo_pool("echo/b", "premium")]
    async with start_runtime(nats_url, pools) as rt:
        echo(rt, "echo/a").fail_after = 2
        echo(rt, "echo/a").fail_with = Preempted("echo/a: evicted (test control)")
        sent: list[str] = []
        with pytest.raises(StreamInterrupted) as err:
            await rt.gateway.ask(Query(prompt="survive this", covenant="gemma-2b"), stream=sent.append)  # type: ignore[union-attr]
        assert echo(rt, "echo/b").executed == 0  # not re-struck
    assert "".join(sent) == "echo: survive "
    assert err.value.retryable and "echo/a" in err.value.message and err.value.tried


async def test_buffered_part_fails_over_without_duplicating_text(nats_url: str) -> None:
    """Part 2 fails after a chunk that was only buffered (part 1 still running): it is re-struck
    elsewhere, and the client sees each part's text once."""
    pools = [echo_pool("echo/a", "standard", usd_per_mtok_out=0.01), echo_pool("echo/b", "premium")]
    async with start_runtime(nats_url, pools) as rt:
        a, b = echo(rt, "echo/a"), echo(rt, "echo/b")
        gate = a.hold(after=1)  # part 1 waits after its first word
        a.fail_after, a.fail_match = 1, "Spain"  # part 2 fails after its first (buffered) word
        sent: list[str] = []
        prompt = "What is the capital of France? And what is the capital of Spain?"
        task = asyncio.create_task(rt.gateway.ask(Query(prompt=prompt, covenant="gemma-2b"), stream=sent.append))  # type: ignore[union-attr]
        await until(lambda: b.streamed > 0 and len(chunks_at_dispatcher(rt)) == 1, "part 2 re-struck and done")
        gate.set()
        answer = await asyncio.wait_for(task, 10)
    assert [f.pool for f in answer.fragments] == ["echo/a", "echo/b"]
    assert "".join(sent) == answer.text and answer.text.count("echo: ") == 2


async def test_client_leaving_cancels_the_strike_at_its_pool(rt: Runtime) -> None:
    conn = echo(rt)
    conn.hold(after=1)
    first = asyncio.Event()
    task = asyncio.create_task(rt.gateway.ask(Query(prompt="abandon me"), stream=lambda _: first.set()))  # type: ignore[union-attr]
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: running(rt) == 0, "the CancelStrike reached the host and stopped the engine")
    assert conn.cancelled == 1


async def test_cancel_mid_stream_bills_the_streamed_tokens(rt: Runtime) -> None:
    conn = echo(rt)
    conn.hold(after=2)
    cov = rt.orchestrator.covenants.resolve(Query(prompt="x"))
    frag = analyze(Query(query_id="q2", prompt="one two three four"), cov)[0]
    strike = Strike(strike_id=uuid.uuid4().hex, query_id="q2", tenant="t", covenant_id=cov.covenant_id,
                    pool="echo/standard", fragment=frag, model=frag.model, max_price_usd=1.0)
    chunks: list[str] = []
    pending = asyncio.create_task(rt.dispatcher.strike(strike, 10, chunks.append))
    await until(lambda: conn.streamed == 2, "two words streamed")
    await rt.nc.publish(rt.subjects.agent("echo/standard"),
                        encode(CancelStrike(strike_id=strike.strike_id, pool="echo/standard", reason="test")))
    result = await asyncio.wait_for(pending, 10)
    assert isinstance(result, StrikeCancelled)
    spec = rt.hosts["echo/standard"].spec
    assert result.billed_usd >= 2 * spec.usd_per_mtok_out / 1e6  # the two streamed tokens are billed
    assert "".join(chunks) == "echo: one "


async def test_redelivered_streamed_strike_runs_once_and_the_copy_gets_the_whole_text(rt: Runtime) -> None:
    cov = rt.orchestrator.covenants.resolve(Query(prompt="x"))
    frag = analyze(Query(query_id="q3", prompt="run me once"), cov)[0]
    strike = Strike(strike_id=uuid.uuid4().hex, query_id="q3", tenant="t", covenant_id=cov.covenant_id,
                    pool="echo/standard", fragment=frag, model=frag.model, max_price_usd=1.0)
    texts: list[list[str]] = [[], []]
    results = await asyncio.gather(*(rt.dispatcher.strike(strike, 10, texts[i].append) for i in range(2)))
    assert all(isinstance(r, StrikeOk) for r in results)
    assert ["".join(t) for t in texts] == ["echo: run me once"] * 2
    assert echo(rt).executed == 1


async def test_silence_mid_stream_is_noticed(nats_url: str) -> None:
    async with start_runtime(nats_url, [echo_pool()], silence_ms=400, heartbeat_ms=100) as rt:
        echo(rt).hold(after=1)
        sent: list[str] = []
        task = asyncio.create_task(rt.gateway.ask(Query(prompt="then silence"), stream=sent.append))  # type: ignore[union-attr]
        await until(lambda: bool(sent), "the first text")
        await rt.hosts["echo/standard"].stop()  # the host dies holding the strike: no result, no heartbeats
        with pytest.raises(StreamInterrupted) as err:
            await asyncio.wait_for(task, 10)
    assert "silent" in err.value.message


async def test_cascade_is_buffered_and_says_so(nats_url: str) -> None:
    pools = [echo_pool("echo/cheap", "standard", usd_per_mtok_out=0.01), echo_pool("echo/premium", "premium")]
    over = {"strategy": {"serve": "cascade", "cascade": {"tiers": ["pool:echo/cheap", "pool:echo/premium"]}}}
    async with start_runtime(nats_url, pools) as rt:
        sent: list[str] = []
        answer = await rt.gateway.ask(Query(prompt="judge me whole", overrides=over), stream=sent.append)  # type: ignore[union-attr]
        plain = await rt.ask(prompt="judge me whole", overrides=over)
    assert answer.strategy == "whole+cascade (buffered)+fuse:ordered"
    assert plain.strategy == "whole+cascade+fuse:ordered" and plain.ttft_ms is None
    assert sent == [answer.text]  # the whole text, once it was known
    assert echo(rt, "echo/cheap").streamed == 0  # the tiers were struck unstreamed


async def test_reduce_fusion_buffers_the_parts_and_streams_the_reduce(rt: Runtime) -> None:
    conn = echo(rt)
    sent: list[str] = []
    answer = await rt.gateway.ask(Query(prompt="What is a lease? What is a strike?",  # type: ignore[union-attr]
                                        overrides={"fusion": "reduce"}), stream=sent.append)
    assert answer.strategy == "question+single+fuse:reduce (buffered)"
    assert "".join(sent) == answer.text and len(sent) > 1  # the reduce strike's words, as they came
    assert conn.streamed == len(answer.text.split(" "))  # only the reduce strike streamed


async def test_a_version_1_host_that_does_not_stream_still_serves_a_streamed_query(nats_url: str) -> None:
    """A host from before streaming ignores ``Strike.stream`` and sends only its result: the client
    gets the whole text as one piece."""
    async with start_runtime(nats_url, [echo_pool()]) as rt:
        host = rt.hosts["echo/standard"]
        run = host._run

        async def old_run(strike: Strike, stream_to: str | None = None) -> object:
            return await run(strike)  # what a version-1 host does: never streams

        host._run = old_run  # type: ignore[method-assign]
        sent: list[str] = []
        answer = await rt.gateway.ask(Query(prompt="old peers still work"), stream=sent.append)  # type: ignore[union-attr]
    assert sent == [answer.text] == ["echo: old peers still work"]
    assert answer.ttft_ms is not None


async def test_a_hedged_fragment_comes_whole_and_says_so(nats_url: str) -> None:
    pools = [echo_pool("echo/a", "standard", usd_per_mtok_out=0.01), echo_pool("echo/b", "standard")]
    async with start_runtime(nats_url, pools) as rt:
        await rt.wait_for_pools(["echo/a", "echo/b"])
        sent: list[str] = []
        answer = await rt.gateway.ask(Query(prompt="race me", overrides={"strategy": {"hedge": {"enabled": True}}}),  # type: ignore[union-attr]
                                      stream=sent.append)
    assert answer.strategy == "whole+single+hedge (buffered)+fuse:ordered"
    assert sent == [answer.text] == ["echo: race me"]
    assert echo(rt, "echo/a").streamed == echo(rt, "echo/b").streamed == 0  # struck unstreamed
