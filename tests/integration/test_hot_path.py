"""The hot path's batching and timers keep their promises: verdicts reach the pool's track record
(one message per pool per loop iteration), a slow strike is kept alive by heartbeats, a deadline
still fails a strike on time, and the ledger settles every strike once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import nats
import pytest

from homeskillet.errors import DeadlineExceeded
from homeskillet.strike import Dispatcher
from homeskillet.subjects import Subjects
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Verdict, Verdicts, decode_verdicts


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def verdict(pool: str, sid: str) -> Verdict:
    return Verdict(strike_id=sid, query_id="q", tenant="t", pool=pool, covenant_id="c", kept=True)


async def test_verdicts_of_one_iteration_go_out_as_one_message_per_pool(nats_url):
    subjects = Subjects(f"t{uuid.uuid4().hex[:10]}")
    nc = await nats.connect(nats_url)
    watch_a = await nc.subscribe(subjects.verdict("p/a"))
    watch_b = await nc.subscribe(subjects.verdict("p/b"))
    await nc.flush()
    dispatcher = Dispatcher(nc, subjects)
    await dispatcher.start()
    try:
        for sid in ("1", "2", "3"):
            dispatcher.verdict(verdict("p/a", sid))
        dispatcher.verdict(verdict("p/b", "4"))
        a = await watch_a.next_msg(timeout=5)
        b = await watch_b.next_msg(timeout=5)
        assert [v.strike_id for v in decode_verdicts(a.data)] == ["1", "2", "3"]
        assert b'"kind":"verdict"' in b.data and b'"verdicts"' not in b.data  # a lone verdict: the old message
        assert [v.strike_id for v in decode_verdicts(b.data)] == ["4"]
        dispatcher.verdict(verdict("p/a", "5"))  # stop() publishes what is still waiting
    finally:
        await dispatcher.stop()
    assert [v.strike_id for v in decode_verdicts((await watch_a.next_msg(timeout=5)).data)] == ["5"]
    with pytest.raises(nats.errors.TimeoutError):
        await watch_a.next_msg(timeout=0.2)  # nothing sent twice
    await nc.close()


async def test_every_strike_reaches_the_track_record_and_the_ledger_once(nats_url):
    pool = echo_pool("echo/slowish", options={"delay_ms": 20})
    async with start_runtime(nats_url, [pool]) as rt:
        n = 24
        late = {"qos": {"latency_target_ms": 1}}  # every strike breaks the latency target
        answers = await asyncio.gather(*(rt.ask(prompt=f"question {i}", overrides=late) for i in range(n)))
        assert all(not a.fragments[0].kept for a in answers)
        record = rt.hosts["echo/slowish"].agent.state.record
        await eventually(lambda: record.total == n)
        assert record.kept == 0 and record.reliability == pytest.approx(4 / (n + 4))
        report = await rt.ledger_report()
        assert report.settlements == n and report.duplicates_ignored == 0
        assert report.spent_usd["default"] == pytest.approx(sum(a.cost_usd for a in answers))


async def test_a_strike_longer_than_the_silence_window_is_kept_alive_by_heartbeats(nats_url):
    pool = echo_pool("echo/slow", options={"delay_ms": 900})
    async with start_runtime(nats_url, [pool], silence_ms=400, heartbeat_ms=100) as rt:
        answer = await rt.ask(prompt="take your time")
        assert answer.fragments[0].pool == "echo/slow" and answer.fragments[0].tried == []


async def test_a_hard_deadline_fails_the_strike_at_the_deadline_not_at_the_silence_window(nats_url):
    pool = echo_pool("echo/stuck", options={"delay_ms": 5000})
    async with start_runtime(nats_url, [pool], silence_ms=3000) as rt:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await rt.ask(prompt="hurry", overrides={"qos": {"hard_deadline_ms": 300, "latency_target_ms": 200}})
        assert 0.29 < time.monotonic() - t0 < 2.0


def test_verdicts_wire_roundtrip():
    from homeskillet.wire import encode

    batch = Verdicts(verdicts=[verdict("p", "1"), verdict("p", "2")])
    assert [v.strike_id for v in decode_verdicts(encode(batch))] == ["1", "2"]
    assert decode_verdicts(encode(verdict("p", "3")))[0].strike_id == "3"
