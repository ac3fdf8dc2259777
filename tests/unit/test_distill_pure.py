"""The distillation loop's pure steps: agreement, the training set, the canary state machine."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from homeskillet.distill import StudentState, agree, decide, normalise, split_pairs, to_chat_record, trainable
from homeskillet.distill.canary import routes_to_student
from homeskillet.distill.capture import pair_id
from homeskillet.distill.dataset import write_jsonl
from homeskillet.wire import Distill, DistillPair, Message


def mk(i: int, conf: float | None = 0.9, text: str = "billing") -> DistillPair:
    return DistillPair(pair_id=pair_id("acme", "s", f"h{i}"), tenant="acme", covenant="c", student="s",
                       query_id=f"q{i}", fragment_hash=f"h{i}", prompt=f"p{i}", teacher_model="t", teacher_pool="p",
                       teacher_text=text, teacher_confidence=conf)


def test_normalise_folds_case_punctuation_articles_and_labels() -> None:
    assert normalise("  The Answer is: Billing. ") == normalise("billing") == "billing"
    assert normalise("Café au lait!") == "cafe au lait"
    assert normalise("Paris") != normalise("Lyon")


@given(st.text(max_size=200))
def test_normalise_is_idempotent(text: str) -> None:
    assert normalise(normalise(text)) == normalise(text)


def test_exact_and_semantic_agreement() -> None:
    assert agree("Billing.", "billing").agreed
    assert not agree("refund", "billing").agreed

    def embed(texts: object) -> np.ndarray:  # two fixed directions: 0.6 cosine between different texts
        rows = [np.array([1.0, 0.0]) if t == "a b" else np.array([0.6, 0.8]) for t in texts]  # type: ignore[attr-defined]
        return np.stack(rows)

    near = agree("a b", "c d", measure="semantic", threshold=0.5, embed=embed)
    assert near.agreed and not near.exact and abs(near.score - 0.6) < 1e-9
    assert not agree("a b", "c d", measure="semantic", threshold=0.7, embed=embed).agreed


def test_trainable_needs_a_sure_teacher() -> None:
    pairs = [mk(0, 0.95), mk(1, 0.5), mk(2, None), mk(3, 0.99, text="  ")]
    assert [p.fragment_hash for p in trainable(pairs, 0.8)] == ["h0"]
    assert [p.fragment_hash for p in trainable(pairs, 0.0)] == ["h0", "h1", "h2"]


def test_split_is_seeded_stable_and_never_moves_a_pair() -> None:
    pairs = [mk(i) for i in range(400)]
    a = split_pairs(pairs, 0.2, seed=7)
    b = split_pairs(list(reversed(pairs)), 0.2, seed=7)
    assert {p.pair_id for p in a.valid} == {p.pair_id for p in b.valid}
    assert 50 < len(a.valid) < 110 and len(a.train) + len(a.valid) == 400
    more = split_pairs([*pairs, *(mk(i) for i in range(400, 500))], 0.2, seed=7)
    assert {p.pair_id for p in a.valid} <= {p.pair_id for p in more.valid}
    assert {p.pair_id for p in split_pairs(pairs, 0.2, seed=8).valid} != {p.pair_id for p in a.valid}


def test_chat_record_and_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = DistillPair(pair_id="x", tenant="a", covenant="c", student="s", query_id="q", fragment_hash="h",
                    prompt="Which team?", context=[Message(role="user", content="hi"),
                                                   Message(role="assistant", content="hello")],
                    teacher_model="t", teacher_pool="p", teacher_text="billing")
    rec = to_chat_record(p, system="Triage tickets.")
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rec["messages"][-1]["content"] == "billing"
    out = tmp_path / "d" / "train.jsonl"
    assert write_jsonl(out, [rec, rec]) == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == [rec, rec]


def test_canary_walk_promote_and_rollback() -> None:
    t = Distill(student="s", promote_at=0.85, rollback_below=0.75, canary_min_samples=40, canary_share=0.25)
    s = StudentState(student="s", stage="trained", heldout_after=0.6)
    assert decide(s, t).action == "reject"
    s.heldout_after = 0.9
    d = decide(s, t)
    assert (d.action, d.stage) == ("start_canary", "canary")
    s.stage = d.stage
    assert routes_to_student(s, t, 0.1) and not routes_to_student(s, t, 0.3)
    for _ in range(39):
        s.observe(True, 40)
    assert decide(s, t).action == "none"  # a window of 40 is needed to promote
    s.observe(True, 40)
    d = decide(s, t)
    assert d.action == "promote" and "100.0%" in d.reason
    s.stage = d.stage
    assert routes_to_student(s, t, 0.99)
    for _ in range(20):  # the teacher changed its answers: half the window disagrees
        s.observe(False, 40)
    d = decide(s, t)
    assert (d.action, d.stage) == ("rollback", "rolled_back")
    s.stage = d.stage
    assert not routes_to_student(s, t, 0.0)


def test_covenant_distill_table_is_checked() -> None:
    import pytest

    from homeskillet.covenant import _convert
    from homeskillet.errors import CovenantError

    base = {"name": "triage", "resources": {"model": "claude"}}
    cov = _convert({**base, "distill": {"student": "triage-s", "canary_share": 0.2}}, "t.toml", "t.toml")
    assert cov.distill is not None and cov.distill.canary_share == 0.2 and cov.distill.mode == "async"
    for table, term in (({"student": "claude"}, "distill.student"),
                        ({"student": "s", "canary_share": 1.5}, "distill.canary_share"),
                        ({"student": "s", "student_step": "queue"}, "distill.student_step"),
                        ({"student": "s", "rollback_below": 0.9, "promote_at": 0.8}, "distill.rollback_below"),
                        ({"student": "s", "lora_rank": 0}, "distill.lora_rank")):
        with pytest.raises(CovenantError) as err:
            _convert({**base, "distill": table}, "t.toml", "t.toml")
        assert err.value.term == term
    with pytest.raises(CovenantError, match=r"distill\.nope"):
        _convert({**base, "distill": {"student": "s", "nope": 1}}, "t.toml", "t.toml")


def test_evaluate_scores_overall_and_unseen_wordings() -> None:
    from homeskillet.distill.evaluate import evaluate

    pairs = [mk(i, text=label) for i, label in enumerate(["billing", "refund", "outage", "billing"])]
    said = {"p0": "Billing.", "p1": "billing", "p2": "Outage", "p3": "billing"}
    ev = evaluate(pairs, lambda msgs: said[msgs[-1]["content"]], Distill(student="s"),
                  groups={pairs[2].pair_id: "unseen_wording", pairs[1].pair_id: "unseen_wording"})
    assert ev.overall.n == 4 and ev.overall.exact == 0.75 and ev.overall.agreed == 0.75
    assert ev.groups["unseen_wording"].n == 2 and ev.groups["unseen_wording"].agreed == 0.5
    assert ev.samples[0] == ("p0", "billing", "Billing.")
