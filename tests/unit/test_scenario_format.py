"""Scenario files are strict, every shipped one loads, and arrivals repeat exactly for a seed."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from homeskillet.replay.arrivals import ArrivalStream, CohortTable
from homeskillet.replay.scenario import Burst, ScenarioError, load_scenario, shorten

ROOT = Path(__file__).parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))
BUNDLED = {"chatbot", "image-pipeline", "research-lab", "burst-spillover", "provider-outage", "preemption-storm",
           "nats-failover", "cascade", "cascade-tradeoff", "hedged-tail"}

MINIMAL = """
seed = 1
duration_s = 10
[arrivals]
process = "constant"
rate_qps = 4
[[classes]]
name = "c"
share = 1.0
covenant = "gemma-2b"
[[classes.templates]]
prompt_tokens = 10
max_tokens = 8
[[pools]]
name = "echo/a"
simulates = "hostedai"
pool_class = "standard"
"""


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_bundled_scenario_is_shipped():
    assert {p.stem for p in SHIPPED} >= BUNDLED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_loads_and_shortens(path):
    s = load_scenario(path)
    assert s.name == path.stem and s.source == str(path)
    short = shorten(s)
    assert short.duration_s == s.short.duration_s < s.duration_s
    assert all(0 <= f.at_s < short.duration_s for f in short.faults)
    assert [f.kind for f in short.faults] == [f.kind for f in s.faults]


def test_design_document_figures_are_what_the_scenarios_say():
    chat = load_scenario(ROOT / "scenarios/chatbot.toml")
    assert round(chat.arrivals.rate_qps * chat.duration_s) == pytest.approx(10_000_000, rel=1e-3)
    assert {c.name: c.share for c in chat.classes} == {"simple": 0.8, "complex": 0.2}
    assert chat.budget_usd_per_day == 500.0
    by_provider: dict[str, int] = {}
    for p in chat.pools:
        by_provider[p.simulates] = by_provider.get(p.simulates, 0) + p.accelerators
    assert (by_provider["vastai"], by_provider["ionet"], by_provider["tpu"]) == (500, 500, 200)
    lab = load_scenario(ROOT / "scenarios/research-lab.toml")
    assert len(lab.tenants(lab.classes[0])) == 50
    img = load_scenario(ROOT / "scenarios/image-pipeline.toml")
    assert round(img.arrivals.rate_qps * img.duration_s) == pytest.approx(1_000_000, rel=1e-3)
    assert {c.name: c.share for c in img.classes}["escalated"] == 0.05
    nats = load_scenario(ROOT / "scenarios/nats-failover.toml")
    assert nats.stack.nats_nodes == 3 and [f.kind for f in nats.faults] == ["nats_kill", "worker_kill"]


@pytest.mark.parametrize(("edit", "key"), [
    ("speed = 3\n", "'speed'"),
    ("[stack]\nnats_node = 3\n", "'stack.nats_node'"),
    ('[[faults]]\nat_s = 1\nkind = "outage"\npool = "echo/a"\nlenght_s = 3\n', "'faults[0].lenght_s'"),
])
def test_an_unknown_key_is_an_error_naming_the_file_and_the_key(tmp_path, edit, key):
    path = _write(tmp_path, MINIMAL.replace('seed = 1\n', 'seed = 1\n' + edit) if not edit.startswith("[")
                  else MINIMAL + edit)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in info.value.message and key in info.value.message


@pytest.mark.parametrize(("old", "new", "key"), [
    ("share = 1.0", "share = 0.7", "classes.share"),
    ('covenant = "gemma-2b"', 'covenant = "gpt-9"', "classes[0] (c).covenant"),
    ('pool_class = "standard"', 'pool_class = "gold"', "pools[0] (echo/a).pool_class"),
    ('simulates = "hostedai"', 'simulates = "aws"', "pools[0] (echo/a).simulates"),
    ('rate_qps = 4', 'rate_qps = 0', "arrivals.rate_qps"),
    ('pool_class = "standard"', 'pool_class = "standard"\npreempt_rate = 0.1', "preempt_rate"),
])
def test_inconsistent_values_are_errors_naming_the_key(tmp_path, old, new, key):
    path = _write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert key in info.value.message and str(path) in info.value.message


def test_faults_must_name_real_pools_and_nodes(tmp_path):
    bad_pool = MINIMAL + '[[faults]]\nat_s = 1\nkind = "outage"\npool = "echo/b"\n'
    with pytest.raises(ScenarioError, match="not a pool of this scenario"):
        load_scenario(_write(tmp_path, bad_pool))
    node0 = MINIMAL + '[stack]\nnats_nodes = 3\n[[faults]]\nat_s = 1\nkind = "nats_kill"\nnode = 0\n'
    with pytest.raises(ScenarioError, match="node 0 carries the clients"):
        load_scenario(_write(tmp_path, node0))
    late = MINIMAL + '[[faults]]\nat_s = 99\nkind = "outage"\npool = "echo/a"\n'
    with pytest.raises(ScenarioError, match="outside the run"):
        load_scenario(_write(tmp_path, late))


def test_arrivals_repeat_exactly_for_a_seed_and_differ_for_another(tmp_path):
    s = load_scenario(ROOT / "scenarios/chatbot.toml")
    s = msgspec.structs.replace(s, duration_s=30.0)
    a, b = ArrivalStream(s).take(30.0), ArrivalStream(s).take(30.0)
    for f in ("t", "cls", "tpl", "tenant", "questions"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    # Read in small steps (as the live driver does) or at once: the same queries.
    stepped = ArrivalStream(s)
    parts = [stepped.take(x) for x in np.arange(0.1, 30.05, 0.1)]
    assert np.array_equal(np.concatenate([p.t for p in parts]), a.t)
    other = ArrivalStream(msgspec.structs.replace(s, seed=8)).take(30.0)
    assert not np.array_equal(other.t[:50], a.t[:50])


def test_poisson_rate_class_shares_and_multi_question_share():
    s = load_scenario(ROOT / "scenarios/chatbot.toml")
    s = msgspec.structs.replace(s, duration_s=600.0, arrivals=msgspec.structs.replace(s.arrivals,
                                                                                       diurnal_amplitude=0.0))
    b = ArrivalStream(s).take(600.0)
    expected = s.arrivals.rate_qps * 600
    assert abs(len(b) - expected) < 5 * expected ** 0.5
    assert np.all(np.diff(b.t) >= 0) and b.t[0] >= 0 and b.t[-1] < 600
    assert np.mean(b.cls == 1) == pytest.approx(0.2, abs=0.01)
    simple = b.questions[b.cls == 0]
    assert np.mean(simple > 1) == pytest.approx(0.1, abs=0.01) and simple.max() <= 3
    ids = CohortTable(s).ids(b)
    assert ids.min() >= 0 and ids.max() < len(CohortTable(s))


def test_constant_and_burst_arrivals(tmp_path):
    s = load_scenario(_write(tmp_path, MINIMAL))
    b = ArrivalStream(s).take(10.0)
    assert len(b) == 40 and np.allclose(np.diff(b.t), 0.25)
    arr = msgspec.structs.replace(s.arrivals, process="bursts", rate_qps=50.0,
                                  bursts=[Burst(at_s=4, duration_s=2, factor=5.0)])
    burst = msgspec.structs.replace(s, arrivals=arr)
    t = ArrivalStream(burst).take(10.0).t
    inside, outside = np.sum((t >= 4) & (t < 6)) / 2, np.sum((t < 4) | (t >= 6)) / 8
    assert inside / outside == pytest.approx(5.0, rel=0.25)


def test_a_trace_gives_times_classes_and_tenants(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"t": 0.5, "class": "c"}\n{"t": 0.1, "tenant": "team", "questions": 2}\n\n{"t": 3.0}\n')
    text = MINIMAL.replace('process = "constant"', 'process = "trace"\ntrace = "trace.jsonl"').replace(
        'covenant = "gemma-2b"', 'covenant = "gemma-2b"\ntenants = ["main", "team"]')
    s = load_scenario(_write(tmp_path, text))
    b = ArrivalStream(s).take(10.0)
    assert b.t.tolist() == [0.1, 0.5, 3.0]
    assert b.tenant[0] == 1 and b.questions[0] == 2
    trace.write_text('{"t": "soon"}\n')
    with pytest.raises(ScenarioError, match=r"trace\.jsonl:1"):
        ArrivalStream(load_scenario(_write(tmp_path, text))).take(1.0)
    trace.write_text('{"t": 1, "tenant": "nobody"}\n')
    with pytest.raises(ScenarioError, match="'nobody'"):
        ArrivalStream(load_scenario(_write(tmp_path, text))).take(1.0)
