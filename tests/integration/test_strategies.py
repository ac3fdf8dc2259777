"""Every decomposition, serving and fusion strategy through a real nats-server and real pool hosts
(echo engines with seeded quality, confidence and latency; see homeskillet/providers/echo.py)."""

from __future__ import annotations

import pytest

from homeskillet.analyze import assess
from homeskillet.providers.echo import EchoConnector
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Query

CHEAP = {"quality": 0.5, "seed": 3, "logprobs": True, "confidence_right": [0.8, 0.99], "confidence_wrong": [0.1, 0.4]}


def prompts(right: bool, n: int, **options: object) -> list[str]:
    """Prompts an echo pool with ``options`` answers right (or wrong), deterministically."""
    engine = EchoConnector(**options)  # type: ignore[arg-type]
    out = [p for p in (f"What is fact number {i} about pools?" for i in range(200)) if engine.right(p) == right]
    return out[:n]


async def test_cascade_keeps_a_confident_cheap_answer_and_escalates_an_unsure_one(nats_url):
    pools = [echo_pool("echo/cheap", "standard", options=CHEAP),
             echo_pool("echo/premium", "premium", usd_per_mtok_in=2.0, usd_per_mtok_out=4.0)]
    over = {"strategy": {"serve": "cascade",
                         "cascade": {"tiers": ["pool:echo/cheap", "pool:echo/premium"], "threshold": 0.6}}}
    async with start_runtime(nats_url, pools) as rt:
        good = await rt.ask(prompt=prompts(True, 1, **CHEAP)[0], overrides=over)
        assert [(f.pool, f.contributed) for f in good.fragments] == [("echo/cheap", True)]
        assert good.fragments[0].contribution.startswith("kept at tier 1/2")
        assert good.fragments[0].confidence >= 0.8 and "[wrong" not in good.text

        bad_prompt = prompts(False, 1, **CHEAP)[0]
        bad = await rt.ask(prompt=bad_prompt, overrides=over)
        assert [(f.pool, f.contributed) for f in bad.fragments] == [("echo/cheap", False), ("echo/premium", True)]
        assert "escalated from tier 1" in bad.fragments[0].contribution and bad.fragments[0].confidence < 0.6
        assert bad.text == f"echo: {bad_prompt}"  # the premium answer
        assert bad.cost_usd == pytest.approx(sum(f.cost_usd for f in bad.fragments))
        assert bad.strategy.startswith("whole+cascade")


async def test_cascade_by_self_consistency_when_the_pool_gives_no_logprobs(nats_url):
    unsure = {"quality": 0.5, "seed": 3, "vary_wrong": True}
    pools = [echo_pool("echo/cheap", "standard", options=unsure), echo_pool("echo/premium", "premium")]
    over = {"strategy": {"serve": "cascade", "cascade": {"tiers": ["pool:echo/cheap", "pool:echo/premium"],
                                                         "threshold": 0.9, "samples": 2}}}
    async with start_runtime(nats_url, pools) as rt:
        kept = await rt.ask(prompt=prompts(True, 1, **unsure)[0], overrides=over)
        assert kept.fragments[-1].pool == "echo/cheap" and kept.fragments[-1].confidence == 1.0
        assert sum(1 for f in kept.fragments if f.pool == "echo/cheap") == 2  # both samples charged
        escalated = await rt.ask(prompt=prompts(False, 1, **unsure)[0], overrides=over)
        assert escalated.fragments[-1].pool == "echo/premium"
        assert [f.confidence for f in escalated.fragments if f.role == "cascade" and not f.contributed] == [0.5]


async def test_ensemble_vote_confidence_and_teacher_override(nats_url):
    wrong = {"quality": 0.0, "seed": 9, "logprobs": True, "confidence_wrong": [0.1, 0.2]}
    right = {"logprobs": True, "confidence_right": [0.9, 0.95]}
    pools = [echo_pool("echo/a", "standard", options=wrong), echo_pool("echo/b", "standard", options=wrong),
             echo_pool("echo/c", "premium", options=right, usd_per_mtok_out=3.0)]
    members = ["pool:echo/a", "pool:echo/b", "pool:echo/c"]

    def over(fuse: str) -> dict:
        return {"strategy": {"serve": "ensemble", "ensemble": {"members": members, "fuse": fuse,
                                                               "teacher": "pool:echo/c"}}}

    async with start_runtime(nats_url, pools) as rt:
        voted = await rt.ask(prompt="Which pool is right?", overrides=over("vote"))
        assert "[wrong 9]" in voted.text  # two wrong students outvote one right teacher
        assert {f.pool: f.contributed for f in voted.fragments} == {"echo/a": True, "echo/b": True, "echo/c": False}
        assert any("won the vote 2/3" in f.contribution for f in voted.fragments)

        weighed = await rt.ask(prompt="Which pool is right?", overrides=over("confidence"))
        assert weighed.text == "echo: Which pool is right?"  # 0.9+ outweighs two answers at ≤ 0.2
        assert {f.pool for f in weighed.fragments if f.contributed} == {"echo/c"}

        taught = await rt.ask(prompt="Which pool is right?", overrides=over("teacher"))
        assert taught.text == "echo: Which pool is right?"
        notes = {f.pool: f.contribution for f in taught.fragments}
        assert notes["echo/c"].endswith("teacher override") and notes["echo/a"].endswith("overridden by teacher")
        assert len({f.strike_id for f in taught.fragments}) == 3
        assert taught.cost_usd == pytest.approx(sum(f.cost_usd for f in taught.fragments))


async def test_hedged_strike_races_a_late_pool_and_cancels_the_loser(nats_url):
    slow = echo_pool("echo/slow", "standard", usd_per_mtok_in=0.1, options={"delay_ms": 5000})
    fast = echo_pool("echo/fast", "standard", usd_per_mtok_in=5.0, usd_per_mtok_out=5.0)
    over = {"qos": {"latency_target_ms": 80, "priority": 0},
            "strategy": {"hedge": {"enabled": True, "min_samples": 1000}}}
    async with start_runtime(nats_url, [slow, fast]) as rt:
        answer = await rt.ask(prompt="race me", overrides=over)
        won, lost = [f for f in answer.fragments if f.contributed], [f for f in answer.fragments if not f.contributed]
        assert won[0].pool == "echo/fast" and "hedged after" in won[0].why and "the hedge won" in won[0].why
        assert lost[0].pool == "echo/slow" and lost[0].role == "hedge" and "cancelled" in lost[0].contribution
        assert answer.latency_ms < 2000  # not the slow pool's 5 s
        assert rt.hosts["echo/slow"].connector.cancelled == 1
        billed = 2 * 0.1 / 1e6  # the slow pool billed the 2 prompt tokens it had processed, nothing else
        assert lost[0].cost_usd == pytest.approx(billed)
        report = await rt.ledger_report()
        assert report.by_pool["echo/slow"] == pytest.approx(billed)
        assert answer.cost_usd == pytest.approx(won[0].cost_usd + billed)


async def test_an_unhedged_covenant_waits_for_its_pool(nats_url):
    slow = echo_pool("echo/slow", "standard", usd_per_mtok_in=0.1, options={"delay_ms": 300})
    fast = echo_pool("echo/fast", "standard", usd_per_mtok_in=5.0, usd_per_mtok_out=5.0)
    async with start_runtime(nats_url, [slow, fast]) as rt:
        answer = await rt.ask(prompt="no race", overrides={"qos": {"latency_target_ms": 80, "priority": 0}})
        assert [f.pool for f in answer.fragments] == ["echo/slow"]


async def test_long_context_is_mapped_over_chunks_that_fit_the_window_and_reduced(nats_url):
    pools = [echo_pool("echo/window", "standard", context_tokens=300)]
    paragraphs = [" ".join(f"w{p}x{i}" for i in range(70)) for p in range(8)]
    prompt = "\n\n".join([*paragraphs, "What do these paragraphs have in common?"])
    async with start_runtime(nats_url, pools) as rt:
        answer = await rt.ask(prompt=prompt, overrides={"max_tokens": 64})
        chunks = [f for f in answer.fragments if f.role == "chunk"]
        reduces = [f for f in answer.fragments if f.role == "reduce"]
        assert len(chunks) >= 3 and all(f.prompt_tokens + 64 <= 300 for f in chunks)
        assert len(reduces) >= 2  # the partial answers did not fit one reduce prompt: a tree
        assert reduces[-1].contribution.startswith("reduce of") and reduces[-1].contributed
        assert answer.text.startswith("echo: What do these paragraphs have in common?")
        assert "long" in answer.strategy

        # A pool whose window is too small for a fragment refuses it, naming the term.
        small = echo_pool("echo/tiny", "premium", context_tokens=50)
        await rt.add_pool(small)
        await rt.wait_for_pools(["echo/tiny"])
        with pytest.raises(Exception, match="context_tokens"):
            await rt.ask(prompt=" ".join(["word"] * 80), overrides={
                "max_tokens": 16, "resources": {"pool_class": "premium"}, "fallback": {"steps": ["fail"]},
                "strategy": {"decompose": ["questions"]}})


async def test_reduce_fusion_combines_the_parts_with_a_model(nats_url):
    async with start_runtime(nats_url) as rt:
        answer = await rt.ask(prompt="What is a lease? What is a strike?", overrides={"fusion": "reduce"})
        roles = [(f.role, f.contributed) for f in answer.fragments]
        assert roles == [("question", True), ("question", True), ("reduce", True)]
        assert answer.fragments[0].contribution == "part 1/2, fed to the reduce"
        assert answer.text.startswith("echo: What is a lease? What is a strike? Combine these 2 partial answers")


async def test_cache_hits_exactly_and_semantically_within_a_tenant_only(nats_url):
    over = {"cache": {"mode": "semantic", "threshold": 0.8}}
    async with start_runtime(nats_url) as rt:
        engine = rt.hosts["echo/standard"].connector
        first = await rt.ask(prompt="How do I reverse a list in Python?", overrides=over, tenant="acme")
        assert first.fragments[0].cached == "" and engine.executed == 1
        again = await rt.ask(prompt="how do I reverse a list in python?", overrides=over, tenant="acme")
        assert again.fragments[0].cached == "exact" and again.cost_usd == 0 and again.text == first.text
        para = await rt.ask(prompt="What's the way to reverse a Python list?", overrides=over, tenant="acme")
        assert para.fragments[0].cached == "semantic" and "similarity" in para.fragments[0].contribution
        assert engine.executed == 1
        other = await rt.ask(prompt="How do I reverse a list in Python?", overrides=over, tenant="globex")
        assert other.fragments[0].cached == "" and engine.executed == 2  # never across tenants
        off = await rt.ask(prompt="How do I reverse a list in Python?", tenant="acme")  # default: cache off
        assert off.fragments[0].cached == "" and engine.executed == 3


async def test_complexity_routes_a_query_that_names_no_covenant(nats_url):
    pools = [echo_pool("echo/std", "standard"), echo_pool("echo/premium", "premium")]
    route = {"strategy": {"route": [{"min_complexity": 0.3, "covenant": "qwen-14b"}]}}
    hard = ("Prove step by step that the integral of 2*x from 0 to 3 equals 9, then derive it again in code:\n"
            "```python\ndef f(x):\n    return 2 * x\n```")
    assert assess(Query(prompt=hard)).complexity >= 0.3 > assess(Query(prompt="hi there")).complexity
    async with start_runtime(nats_url, pools) as rt:
        routed = await rt.ask(prompt=hard, overrides=route)
        assert routed.covenant == "qwen-14b" and routed.fragments[0].pool == "echo/premium"
        assert routed.complexity >= 0.3
        simple = await rt.ask(prompt="hi there", overrides=route)
        assert simple.covenant == "default"
        named = await rt.ask(prompt=hard, model="gemma-2b", overrides=route)
        assert named.covenant == "gemma-2b"  # a query that names its model is never routed

