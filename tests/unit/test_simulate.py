"""Virtual time: the orchestrator's own decisions, an exact queue, repeatable reports, baselines."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from homeskillet.orchestrator import judge
from homeskillet.replay.outcomes import ewma, judge_many
from homeskillet.replay.policies import POLICIES, policy
from homeskillet.replay.report import Series, build_report, markdown
from homeskillet.replay.scenario import load_scenario, shorten
from homeskillet.replay.simulate import VirtualRun, simulate
from homeskillet.replay.vtime import Items, VPool
from homeskillet.scoring import Ranked
from homeskillet.wire import Bid, Covenant, Offer, Resources, StrikeOk

ROOT = Path(__file__).parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


def _report_json(path: Path, **kw: object) -> bytes:
    s = shorten(load_scenario(path))
    return msgspec.json.encode(build_report(simulate(s, **kw)))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_bundled_scenario_holds_its_terms_in_virtual_time(path):
    r = build_report(simulate(shorten(load_scenario(path))))
    assert r.ledger.sent > 20 and r.ledger.balanced and r.ledger.lost == 0
    assert r.ledger.sent == r.ledger.answered + r.ledger.errors
    assert all(c.ok for c in r.checks), markdown(r)


def test_same_seed_same_report_byte_for_byte():
    path = ROOT / "scenarios/provider-outage.toml"
    assert _report_json(path) == _report_json(path)
    s = shorten(load_scenario(path))
    other = msgspec.json.encode(build_report(simulate(msgspec.structs.replace(s, seed=s.seed + 1))))
    assert other != _report_json(path)


def test_judge_many_is_judge():
    rng = np.random.default_rng(0)
    cov = Covenant(name="x", resources=Resources(model="m"))
    cov.qos.latency_target_ms, cov.qos.hard_deadline_ms, cov.cost.max_usd_per_request = 800, 2000, 0.01
    cost, ms = rng.uniform(0, 0.02, 500), rng.uniform(0, 3000, 500)
    masks = judge_many(cost, ms, np.full(500, 0.01), np.full(500, 800.0), np.full(500, 2000.0))
    for i in range(500):
        ok = StrikeOk(strike_id="s", pool="p", model="m", text="", prompt_tokens=1, completion_tokens=1,
                      cost_usd=float(cost[i]), latency_ms=0.0)
        want = judge(cov, ok, float(ms[i]))
        got = [t for t, m in zip(("cost.max_usd_per_request", "qos.latency_target_ms", "qos.hard_deadline_ms"),
                                 masks, strict=True) if m[i]]
        assert got == want


def test_batched_ewma_is_the_track_records_one_at_a_time():
    from homeskillet.pools import TrackRecord
    from homeskillet.wire import Verdict

    values = np.random.default_rng(3).uniform(10, 900, 40)
    for prev in (None, 250.0):
        rec = TrackRecord()
        rec.latency_ewma_ms = prev
        for v in values:
            rec.add(Verdict(strike_id="s", query_id="q", tenant="t", pool="p", covenant_id="c", kept=True,
                            latency_ms=float(v)))
        assert ewma(prev, values) == pytest.approx(rec.latency_ewma_ms)


def _fifo(capacity: int, busy: list[float], arrivals: list[float], service: list[float]) -> list[float]:
    """Reference: c servers, each strike to the earliest-free one in arrival order."""
    free = sorted(busy + [-1.0] * (capacity - len(busy)))[-capacity:]
    starts = []
    for a, s in zip(arrivals, service, strict=True):
        i = min(range(capacity), key=lambda k: free[k])
        st = max(a, free[i])
        starts.append(st)
        free[i] = st + s
    return starts


@pytest.mark.parametrize("capacity", [1, 3, 16])
def test_the_pool_queue_is_exact_fifo_multi_server(capacity):
    s = load_scenario(ROOT / "scenarios/burst-spillover.toml")
    fp = msgspec.structs.replace(s.pools[0], accelerators=capacity, slots_per_accelerator=1)
    pool = VPool(0, fp, np.random.default_rng(1), 0.0)
    rng = np.random.default_rng(capacity)
    in_flight = rng.uniform(0.5, 3.0, capacity + 2)
    pool.inflight = Items.zeros(len(in_flight))
    pool.inflight["end"] = in_flight  # the other fields are not read by the queue
    arrivals = np.sort(rng.uniform(0, 2, 60))
    service = rng.exponential(0.4, 60)
    got = pool._starts(arrivals, service, 0.0)
    # Servers' free times are the `capacity` latest completions (see vtime's docstring).
    want = _fifo(capacity, sorted(in_flight.tolist())[-capacity:], arrivals.tolist(), service.tolist())
    assert np.allclose(got, want)


def _ranked(*pools: tuple[str, float, int]) -> list[Ranked]:
    out = []
    for name, price, _ in pools:
        offer = Offer(pool=name, provider="p", pool_class="standard", models=["*"])
        bid = Bid(pool=name, offer=offer, model="m", price_usd=price, predicted_start_ms=1, predicted_total_ms=10,
                  tokens_per_s=1, quote_seq=1, expires_at_ms=0)
        out.append(Ranked(bid, 0.0, ""))
    return out


def test_policies_split_alike_strikes_within_admission_room():
    ranked = _ranked(("a", 3.0, 0), ("b", 1.0, 0), ("c", 2.0, 0))
    room = {"a": 5, "b": 2, "c": 10}
    assert [(r.bid.pool, n) for r, n in policy("covenant").split(ranked, 9, room)] == [("a", 5), ("b", 2), ("c", 2)]
    assert [(r.bid.pool, n) for r, n in policy("cheapest").split(ranked, 9, room)] == [("b", 2), ("c", 7)]
    assert sorted((r.bid.pool, n) for r, n in policy("least-loaded").split(ranked, 9, room)) == [("a", 2), ("c", 7)]
    rr = policy("round-robin")
    assert sorted((r.bid.pool, n) for r, n in rr.split(ranked, 9, room)) == [("a", 4), ("b", 2), ("c", 3)]
    assert sum(n for _, n in rr.split(ranked, 100, room)) == 17  # never past the rooms
    with pytest.raises(ValueError, match="round-robin"):
        policy("random")


NAIVE = """
seed = 4
duration_s = 20
[arrivals]
process = "constant"
rate_qps = 10
[[classes]]
name = "review"
share = 1.0
covenant = "qwen-14b"
[[classes.templates]]
prompt_tokens = 100
max_tokens = 64
[[pools]]
name = "vastai/spot"
simulates = "vastai"
pool_class = "preemptible"
models = ["qwen-14b"]
vram_mb = 24576
tflops = 80
preemptible = true
accelerators = 8
usd_per_hour = 0.2
start_ms = 50
ms_per_token = 5
[[pools]]
name = "hostedai/premium"
simulates = "hostedai"
pool_class = "premium"
models = ["qwen-14b"]
vram_mb = 49152
tflops = 366
accelerators = 8
usd_per_hour = 2.0
start_ms = 50
ms_per_token = 5
"""


def test_baselines_ignore_the_covenant_and_the_report_says_which_terms_they_broke(tmp_path):
    path = tmp_path / "naive.toml"
    path.write_text(NAIVE)
    s = load_scenario(path)
    ours = build_report(simulate(s))
    assert {p.name: p.strikes for p in ours.pools}["vastai/spot"] == 0  # qwen-14b forbids preemptible capacity
    assert all(not c.broken_terms.get("qos.preemptible") for c in ours.covenants)
    cheap = build_report(simulate(s, policy_name="cheapest"))
    assert {p.name: p.strikes for p in cheap.pools}["hostedai/premium"] == 0
    assert cheap.covenants[0].broken_terms["qos.preemptible"] == cheap.ledger.answered
    assert cheap.cost.total_usd < ours.cost.total_usd
    # 10 queries/s, each about 0.37 s on a pool: a few in flight at once.
    assert 2 <= ours.peak_concurrency <= 10
    rr = build_report(simulate(s, policy_name="round-robin"))
    strikes = {p.name: p.strikes for p in rr.pools}
    assert abs(strikes["vastai/spot"] - strikes["hostedai/premium"]) <= 2
    assert set(POLICIES) == {"covenant", "round-robin", "least-loaded", "cheapest"}


def test_an_outage_fails_over_and_the_pool_comes_back():
    s = load_scenario(ROOT / "scenarios/provider-outage.toml")
    s = msgspec.structs.replace(s, duration_s=300.0)
    r = build_report(simulate(s))
    pools = {p.name: p for p in r.pools}
    assert pools["hostedai/standard"].failures > 0 and r.fallbacks > 0
    assert r.ledger.balanced and r.ledger.errors == 0
    # Traffic returns to the primary once the outage is over (the last third of the run).
    util = r.plots.utilisation["hostedai/standard"]
    assert max(util[-len(util) // 3:]) > 0
    assert r.faults == ["t=180.00s outage of hostedai/standard for 60 s"]


def test_preemption_storm_and_worker_kill_are_re_struck():
    storm = build_report(simulate(shorten(load_scenario(ROOT / "scenarios/preemption-storm.toml"))))
    assert sum(p.preemptions for p in storm.pools) > 0 and storm.ledger.errors == 0 and storm.fallbacks > 0
    nats = build_report(simulate(shorten(load_scenario(ROOT / "scenarios/nats-failover.toml"))))
    assert sum(p.lost for p in nats.pools) > 0 and nats.ledger.errors == 0 and nats.ledger.balanced


def test_tenant_budgets_end_in_explicit_errors_and_hold():
    s = load_scenario(ROOT / "scenarios/research-lab.toml")
    classes = [msgspec.structs.replace(c, overrides={**c.overrides, "cost": {**c.overrides["cost"],
                                                                             "tenant_budget_usd": 1e-4}})
               for c in s.classes]
    s = msgspec.structs.replace(shorten(s), classes=classes)
    run = VirtualRun(s)
    r = build_report(run.run())
    assert r.errors.get("budget_exceeded", 0) > 0 and r.ledger.balanced
    assert r.ledger.sent == r.ledger.answered + r.ledger.errors
    # Holds keep every tenant near its budget (settlement may differ from the hold by one strike's drift).
    assert run.spent.max() <= 1e-4 * 1.5


def test_replay_modules_declare_a_complete_all():
    import importlib
    import pkgutil

    import homeskillet.replay as pkg

    for info in pkgutil.iter_modules(pkg.__path__, "homeskillet.replay."):
        mod = importlib.import_module(info.name)
        public = {n for n, v in vars(mod).items() if not n.startswith("_") and callable(v)
                  and getattr(v, "__module__", None) == mod.__name__}
        assert public <= set(mod.__all__), f"{info.name} does not export {sorted(public - set(mod.__all__))}"


def test_busy_time_is_spread_over_the_buckets_a_strike_overlaps():
    s = Series(np.linspace(0.0, 10.0, 11), 2)
    s.add_busy(0, np.array([0.5, 2.5]), np.array([0.7, 4.0]))  # the second spans buckets 2 and 3
    s.add_busy_many(np.array([1, 1]), np.array([1.0, 3.2]), np.array([1.5, 3.4]))
    assert s.busy[0, :5] == pytest.approx([0.2, 0.0, 0.5, 1.0, 0.0])
    assert s.busy[1, :5] == pytest.approx([0.0, 0.5, 0.0, 0.2, 0.0])
    assert s.busy.max() <= 1.0  # no bucket is busier than it is long (one server)
    s.add_busy(1, np.array([9.5]), np.array([12.0]))  # past the run's end: only its part inside is plotted
    assert s.busy[1, 9] == pytest.approx(0.5)
