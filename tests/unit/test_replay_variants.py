"""Scenario answer quality and variants: strict format, the replay engine answering through the
AnswerModel, and the comparison of variant runs (agreement, kept-cheap, ratios, checks) as pure calls."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from homeskillet.providers.base import InferRequest
from homeskillet.replay.compare import compare
from homeskillet.replay.driver import kept_cheap
from homeskillet.replay.engine import ReplayEngine
from homeskillet.replay.report import Observations, Series, markdown
from homeskillet.replay.scenario import Scenario, ScenarioError, load_scenario, with_variant
from homeskillet.sims.answers import AnswerModel
from homeskillet.sims.base import sim_completion
from homeskillet.wire import Answer, FragmentOutcome

BASE = """
seed = 1
duration_s = 10
[[classes]]
name = "c"
share = 1.0
covenant = "gemma-2b"
overrides = { fallback = { steps = ["premium", "fail"] } }
[[classes.templates]]
prompt_tokens = 10
max_tokens = 8
[[pools]]
name = "vastai/cheap"
simulates = "vastai"
pool_class = "standard"
answers = { seed = 4, quality = 0.6, logprobs = true }
"""
VARIANTS = """
[[variants]]
name = "plain"
[[variants]]
name = "cascade"
overrides = { strategy = { serve = "cascade", cascade = { tiers = ["standard", "premium"], threshold = 0.5 } } }
"""


def _load(tmp_path: Path, text: str) -> Scenario:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_scenario(p)


def test_variant_overrides_are_laid_on_each_class_and_answers_decode_to_the_answer_model(tmp_path):
    s = _load(tmp_path, BASE + VARIANTS)
    assert s.pools[0].answers == AnswerModel(seed=4, quality=0.6, logprobs=True)
    assert s.reference() == "plain"
    c = with_variant(s, "cascade").classes[0]
    assert c.overrides["fallback"] == {"steps": ["premium", "fail"]}  # the class's own, kept
    assert c.overrides["strategy"]["cascade"]["tiers"] == ["standard", "premium"]
    assert with_variant(s, "plain").classes == s.classes


@pytest.mark.parametrize(("text", "key"), [
    (BASE.replace("quality = 0.6", "qualty = 0.6"), "'pools[0].answers.qualty'"),
    (BASE.replace("quality = 0.6", "quality = 1.6"), "quality=1.6 is outside 0..1"),
    (BASE + VARIANTS.replace("threshold = 0.5", "treshold = 0.5"), "variants[1] (cascade).overrides"),
    (BASE + '[[variants]]\nname = "only"\n', "one variant compares with nothing"),
    (BASE + VARIANTS + '[expect]\nreference = "premium"\n', "expect.reference: 'premium' is not a variant"),
    (BASE + "[expect]\nmax_cost_ratio = 0.4\n", "add [[variants]]"),
    (BASE + VARIANTS + "[expect]\nmin_agreement_kept = 1.5\n", "expect.min_agreement_kept: must be in 0..1"),
])
def test_bad_answers_and_variants_are_errors_naming_the_key(tmp_path, text, key):
    with pytest.raises(ScenarioError) as info:
        _load(tmp_path, text)
    assert key in info.value.message and "s.toml" in info.value.message


async def test_the_replay_engine_answers_through_the_answer_model():
    model = AnswerModel(seed=4, quality=0.6, logprobs=True, confidence_right=(0.7, 0.9),
                        confidence_wrong=(0.1, 0.3))
    engine = ReplayEngine(start_ms=0, ms_per_token=0, jitter_sigma=0, answers=msgspec.to_builtins(model))
    plain = ReplayEngine(start_ms=0, ms_per_token=0, jitter_sigma=0)
    prompts = [f"question {i} about pools" for i in range(40)]
    right = [p for p in prompts if model.right(p)]
    assert 0 < len(right) < len(prompts)
    for p in prompts:
        got = await engine.infer(InferRequest(strike_id="s", model="m", prompt=p, max_tokens=8))
        reference = sim_completion("m", p, 8)
        assert (got.text == reference) == (p in right)
        assert got.logprob_mean is not None
        confidence = math.exp(got.logprob_mean)
        assert (0.7 <= confidence <= 0.9) if p in right else (0.1 <= confidence <= 0.3)
        base = await plain.infer(InferRequest(strike_id="s", model="m", prompt=p, max_tokens=8))
        assert base.text == reference and base.logprob_mean is None


def _outcome(pool: str, step: str, role: str = "cascade", contributed: bool = True) -> FragmentOutcome:
    return FragmentOutcome(fragment_id="f", index=0, pool=pool, strike_id="s", model="m", step=step, why="",
                           cost_usd=0.0, latency_ms=1.0, role=role, contributed=contributed)


def test_kept_cheap_means_every_contributing_cascade_part_below_the_last_tier():
    def answer(*fragments: FragmentOutcome) -> Answer:
        return Answer(query_id="q", tenant="t", text="x", covenant="c", covenant_id="c", fusion="ordered",
                      fragments=list(fragments), cost_usd=0.0, latency_ms=1.0)

    kept = answer(_outcome("cheap", "standard"))
    escalated = answer(_outcome("cheap", "standard", contributed=False), _outcome("premium", "premium"))
    mixed = answer(_outcome("cheap", "standard"), _outcome("premium", "premium"))  # two parts, one escalated
    single = answer(_outcome("premium", "premium", role="whole"))
    chain = answer(_outcome("premium", "queue→premium"))  # no tier could serve: the fallback chain did
    cheap = frozenset({"standard"})
    assert [kept_cheap(a, cheap) for a in (kept, escalated, mixed, single, chain)] == [True, False, False, False, False]


def _obs(s: Scenario, variant: str, texts: list[str], kept: list[bool], latency_ms: list[float], cost: float,
         errors: list[int] | None = None) -> Observations:
    n = len(texts)
    err = np.array(errors or [0] * n, dtype=np.int16)
    lat = np.where(err == 0, np.array(latency_ms, dtype=np.float64), np.nan)
    return Observations(
        scenario=s, mode="live", policy="covenant", duration_s=s.duration_s, wall_s=1.0, covenants=["gemma-2b"],
        targets_ms=[2000.0], t=np.linspace(0, 1, n), cls=np.zeros(n, dtype=np.int16), latency_ms=lat,
        cost_usd=np.full(n, cost / n), error=err, fallback=np.zeros(n, dtype=bool), ledger_usd=cost,
        tokens_in=n, tokens_out=n, broken={}, fragments_ok=[n], pools=[], series=Series(np.linspace(0, 10, 5), 0),
        alloc_ms=np.zeros(n), variant=variant, texts=texts, kept_cheap=np.array(kept, dtype=bool))


def test_compare_counts_agreement_per_query_and_checks_the_expectations(tmp_path):
    s = _load(tmp_path, BASE + VARIANTS + "[expect]\nmax_cost_ratio = 0.4\nmax_p99_ratio = 0.9\n"
                                          "min_agreement = 0.8\nmin_agreement_kept = 1.0\n")
    ref = _obs(s, "plain", ["a", "b", "c", "d", "e"], [False] * 5, [100.0] * 5, cost=1.0)
    # Query 2 kept cheap with a different answer; query 4 failed in the variant (not compared).
    var = _obs(s, "cascade", ["a", "b", "C!", "d", ""], [True, False, True, False, False],
               [50.0, 200.0, 50.0, 60.0, 0.0], cost=0.3, errors=[0, 0, 0, 0, 1])
    r = compare([ref, var])
    row = r.comparison[1]
    assert (row.compared, row.agreement, row.kept_cheap, row.agreement_kept) == (4, 0.75, 2, 0.5)
    assert row.cost_ratio == pytest.approx(0.3) and row.p99_ratio > 1.0
    by_name = {c.name: c for c in r.checks}
    assert by_name["cost cascade / plain"].ok
    assert not by_name["p99 cascade / plain"].ok
    agreement = by_name["agreement cascade with plain"]
    assert not agreement.ok and "0.750 of 4" in agreement.detail
    assert not by_name["agreement kept cascade with plain"].ok
    assert by_name["nothing lost [cascade]"].ok and not by_name["error rate [cascade]"].ok  # one explicit error
    assert not r.ok and r.variant == "plain" and [v.variant for v in r.variants] == ["cascade"]
    text = markdown(r)
    assert "## Variants (same seed and arrivals; reference: plain)" in text and "| cascade | 4 | 1 |" in text
    nothing_kept = compare([ref, _obs(s, "cascade", list("abcde"), [False] * 5, [100.0] * 5, cost=0.2)])
    kept_check = next(c for c in nothing_kept.checks if c.name.startswith("agreement kept"))
    assert not kept_check.ok and "no query was kept" in kept_check.detail

