"""The bounded structures on their own: BoundedDict, the retained-entries metric, the cache's
semantic index (rows moved on drop), and the cap on metric children. Counts, never time."""

from __future__ import annotations

import random

import numpy as np
from prometheus_client import CollectorRegistry, Counter, generate_latest

from homeskillet import telemetry
from homeskillet.bounded import BoundedDict, retained
from homeskillet.cache import HashingEmbedder, ResultCache
from homeskillet.wire import CachePolicy, Fragment, FragmentOutcome


def test_bounded_dict_drops_the_oldest_past_its_cap() -> None:
    gone: list[tuple[str, int]] = []
    d: BoundedDict[str, int] = BoundedDict(3, "unit_bounded", on_evict=lambda k, v: gone.append((k, v)))
    for i in range(10):
        d[f"k{i}"] = i
    assert list(d.items()) == [("k7", 7), ("k8", 8), ("k9", 9)]
    assert d.evicted == 7 and gone[0] == ("k0", 0) and len(gone) == 7
    d["k8"] = 80  # an update is not an insertion: nothing is dropped
    assert len(d) == 3 and d.evicted == 7
    assert retained()["unit_bounded"][:2] == (3, 3)


def test_retained_structures_are_exported_to_prometheus() -> None:
    keep: BoundedDict[int, int] = BoundedDict(2, "unit_exported")
    for i in range(5):
        keep[i] = i
    text = generate_latest().decode()
    assert 'hs_retained_entries{structure="unit_exported"} 2.0' in text
    assert 'hs_retained_cap{structure="unit_exported"} 2.0' in text
    assert 'hs_retained_evicted_total{structure="unit_exported"} 3.0' in text


def _frag(prompt: str) -> Fragment:
    return Fragment(fragment_id="f", query_id="q", index=0, prompt=prompt, model="m", hash=prompt, fingerprint=0,
                    prompt_tokens=1, max_tokens=1)


def test_semantic_index_matches_a_brute_force_search_through_puts_and_drops() -> None:
    embed = HashingEmbedder(dim=64)
    cache = ResultCache(max_entries=40, embed=embed)
    sem = CachePolicy(mode="semantic", threshold=0.99)
    rng = random.Random(3)
    out = FragmentOutcome(fragment_id="f", index=0, pool="p", strike_id="s", model="m", step="s", why="",
                          cost_usd=0.0, latency_ms=1.0)
    live: dict[str, str] = {}
    for i in range(300):
        prompt = f"question {rng.randrange(120)} about topic {rng.randrange(7)}"
        cache.put("t", "c", _frag(prompt), f"answer {i}", out, sem)
        live[prompt] = f"answer {i}"
    assert len(cache) == 40 and cache.evicted > 0
    [index] = cache._by_ns.values()
    assert len(index) == 40 and len(index.matrix) <= 128  # halves as it empties, doubles as it fills
    for e in index.entries:  # each row is its own entry's embedding
        assert np.allclose(index.matrix[e.row], embed([e.prompt])[0])
    kept = {e.prompt for e in index.entries}
    for prompt in kept:
        hit = cache.get("t", "c", _frag(prompt + " "), sem)  # not the exact hash: the semantic path
        assert hit is not None and hit.text == live[prompt]


def test_metric_children_are_capped() -> None:
    metric = Counter("unit_capped", "test", ["step"], registry=CollectorRegistry())
    old = telemetry.MAX_LABEL_SETS
    telemetry.MAX_LABEL_SETS = 3
    try:
        for i in range(10):
            telemetry.labelled(metric, step=f"pool:client-chosen-{i}").inc()
    finally:
        telemetry.MAX_LABEL_SETS = old
    children = {s.labels["step"]: s.value for s in metric.collect()[0].samples if s.name.endswith("_total")}
    assert len(children) == 4 and children["other"] == 7.0
