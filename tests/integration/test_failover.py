"""Failure: a pool host killed mid-strike, a strike delivered twice, an actor that crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import msgspec
import nats

from homeskillet.analyze import analyze
from homeskillet.config import Settings
from homeskillet.ledger import Report
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Query, Strike, StrikeOk, decode_strike_result, encode


def _settings_toml(path, prefix: str, url: str) -> None:
    slow = echo_pool("echo/doomed", "standard", usd_per_mtok_out=0.01, options={"delay_ms": 30000})
    # A long quote life: on a loaded machine the young host may stall past the default 3 s between quotes,
    # and an expired quote would send the strike straight to the backup, which is not what this test is about.
    doc = Settings(nats=[url], prefix=prefix, pools=[slow], quote_ttl_ms=60_000)
    path.write_text(msgspec.toml.encode(doc).decode())


async def test_killing_the_winning_pool_mid_strike_restrikes_on_the_fallback(nats_url, tmp_path):
    backup = echo_pool("echo/backup", "premium", usd_per_mtok_out=5.0)
    async with start_runtime(nats_url, [backup], silence_ms=800) as rt:
        cfg = tmp_path / "pool.toml"
        _settings_toml(cfg, rt.subjects.prefix, nats_url)
        proc = subprocess.Popen([sys.executable, "-m", "homeskillet.cli", "pool", "serve", "echo/doomed",
                                 "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            await rt.wait_for_pools(["echo/doomed"], timeout=30)
            nc = await nats.connect(nats_url)
            seen = await nc.subscribe(rt.subjects.strike("echo/doomed"))  # watch the strike go out
            await nc.flush()  # the server knows of the watcher before the strike is sent
            pending = asyncio.create_task(rt.ask(prompt="survive this", covenant="gemma-2b"))
            # Generous: twice in full CI runs the strike left only ~10 s after the ask (cause not found);
            # the covenant's 30 s hard deadline still leaves room for the re-strike.
            await seen.next_msg(timeout=25)
            os.kill(proc.pid, signal.SIGKILL)  # the worker dies holding the strike
            answer = await asyncio.wait_for(pending, 20)
            await nc.close()
        finally:
            proc.kill()
            proc.wait()
        f = answer.fragments[0]
        assert f.pool == "echo/backup" and f.step == "premium"
        assert any("echo/doomed" in t and "silent" in t for t in f.tried), f.tried
        report = await rt.ledger_report()
        assert list(report.by_pool) == ["echo/backup"]  # the lost strike charged nothing


async def test_same_strike_delivered_twice_runs_once_and_is_charged_once(nats_url):
    async with start_runtime(nats_url) as rt:
        cov = rt.orchestrator.covenants.resolve(Query(prompt="x"))
        frag = analyze(Query(query_id="q1", prompt="charge me once"), cov)[0]
        strike = Strike(strike_id=uuid.uuid4().hex, query_id="q1", tenant="t", covenant_id=cov.covenant_id,
                        pool="echo/standard", fragment=frag, model=frag.model, max_price_usd=1.0)
        # Two deliveries at once on the wire: both get the one result.
        nc = await nats.connect(nats_url)
        replies = await asyncio.gather(*(nc.request(rt.subjects.strike("echo/standard"), encode(strike), timeout=5)
                                         for _ in range(2)))
        await nc.close()
        results = [decode_strike_result(r.data) for r in replies]
        assert all(isinstance(r, StrikeOk) for r in results)
        assert sorted(r.duplicate for r in results) == [False, True]  # type: ignore[union-attr]
        assert rt.hosts["echo/standard"].connector.executed == 1
        # The same strike executed twice through the orchestrator is settled once.
        loop = asyncio.get_running_loop()
        first, _ = await rt.orchestrator.execute(strike, cov, 1.0, loop.time() + 5)
        second, _ = await rt.orchestrator.execute(strike, cov, 1.0, loop.time() + 5)
        assert first.text == second.text and rt.hosts["echo/standard"].connector.executed == 1
        report = await rt.ledger.call(Report("t"))
        assert report.settlements == 1 and report.duplicates_ignored == 1
        assert report.spent_usd["t"] == first.cost_usd


async def test_a_crashed_actor_is_restarted_with_its_state(runtime):
    from homeskillet.telemetry import ACTOR_RESTARTS

    before = ACTOR_RESTARTS.labels(actor="ledger")._value.get()
    await runtime.ask(prompt="before the crash")
    runtime.ledger.tell("not a ledger message")  # a tell that raises crashes the actor
    report = await runtime.ledger_report()  # queued behind the crash, answered by the new incarnation
    assert report.settlements == 1  # state survived the restart
    assert ACTOR_RESTARTS.labels(actor="ledger")._value.get() == before + 1
    answer = await runtime.ask(prompt="after the crash")
    assert answer.text == "echo: after the crash"
