"""Live replay: every bundled scenario's short form against the real stack (nats-server, actors,
pool hosts, faults enacted), ending with nothing lost and the scenario's terms held; the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from homeskillet.replay.compare import compare
from homeskillet.replay.driver import replay, replay_variants
from homeskillet.replay.report import build_report, markdown
from homeskillet.replay.scenario import load_scenario, shorten
from homeskillet.replay.simulate import simulate

ROOT = Path(__file__).parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
async def test_every_bundled_scenario_replays_live_with_nothing_lost(path):
    s = shorten(load_scenario(path))
    r = compare(await replay_variants(s)) if s.variants else build_report(await replay(s))
    assert r.ledger.sent > 20
    assert r.ledger.sent == r.ledger.answered + r.ledger.errors and r.ledger.lost == 0
    assert all(c.ok for c in r.checks), markdown(r)
    assert len(r.faults) == len(s.faults)  # every fault of the timeline was enacted
    assert r.allocation.n == r.ledger.answered
    match path.stem:
        case "provider-outage":  # the outage was real: strikes failed on the primary and fell back
            standard = next(p for p in r.pools if p.name == "hostedai/standard")
            assert standard.failures > 0 and r.fallbacks > 0
        case "chatbot":  # live and virtual time see the same traffic and agree within noise
            virtual = build_report(simulate(s))
            assert r.ledger.sent == virtual.ledger.sent
            assert [c.sent for c in r.covenants] == [c.sent for c in virtual.covenants]
            assert 0.5 < r.latency.p50_ms / virtual.latency.p50_ms < 2.0
        case "cascade":  # the cheap pool took every query first; premium answered the unsure ones
            assert [v.variant for v in r.comparison] == ["always-premium", "cascade"]
            cascade = r.comparison[1]
            strikes = {p.name: p.strikes for p in r.variants[0].pools}
            assert strikes["vastai/rtx4090-cheap"] == r.ledger.sent
            assert 0 < strikes["hostedai/premium"] == r.ledger.sent - cascade.kept_cheap
            assert 0.5 < cascade.kept_cheap / cascade.answered < 0.9 and cascade.agreement_kept == 1.0
        case "cascade-tradeoff":  # overlapping confidence: the threshold trades cost against agreement
            rows = {v.variant: v for v in r.comparison}
            low, mid, high = rows["logprobs-0.50"], rows["logprobs-0.60"], rows["logprobs-0.66"]
            assert low.kept_cheap > mid.kept_cheap > high.kept_cheap > 0
            assert low.cost_ratio < mid.cost_ratio < high.cost_ratio
            assert low.agreement_kept is not None and low.agreement_kept < 1.0 == high.agreement_kept
            assert rows["self-consistency"].agreement_kept == 1.0
        case "hedged-tail":  # hedges went to the second pool only when hedging was on
            west = [next(p.strikes for p in rep.pools if p.name == "hostedai/standard-west")
                    for rep in (r, *r.variants)]
            assert west[0] == 0 < west[1]


async def test_replay_through_the_http_api():
    s = msgspec.structs.replace(shorten(load_scenario(ROOT / "scenarios/image-pipeline.toml")), duration_s=2.0)
    r = build_report(await replay(s, target="http"))
    assert r.ledger.sent > 20 and r.ledger.balanced and r.ledger.errors == 0
    assert all(c.ok for c in r.checks), markdown(r)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeskillet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_simulate_writes_report_and_plots(tmp_path):
    out = tmp_path / "rep"
    done = _cli("simulate", str(ROOT / "scenarios/preemption-storm.toml"), "--short", "--out", str(out), "--quiet",
                "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"report: {out / 'report.md'}" in done.stdout
    for name in ("latency.png", "cost.png", "utilisation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert "## Baselines (same scenario and seed)" in text and "| round-robin |" in text


def test_cli_replay_runs_live_over_nats_and_mcp(tmp_path):
    for target in ("nats", "mcp"):
        out = tmp_path / target
        done = _cli("replay", str(ROOT / "scenarios/provider-outage.toml"), "--short", "--duration", "1.5",
                    "--target", target, "--out", str(out), "--quiet", "--no-plots", "--check", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "nothing lost" in done.stdout and (out / "report.json").exists()
    mcp = _cli("replay", str(ROOT / "scenarios/provider-outage.toml"), "--target", "mcp", "--url",
               "nats://127.0.0.1:4222", cwd=tmp_path)
    assert mcp.returncode == 2 and "http(s)://host:port" in mcp.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("speed = 3\n" + (ROOT / "scenarios/provider-outage.toml").read_text())
    refused = _cli("simulate", str(bad), cwd=tmp_path)
    assert refused.returncode == 2 and "unknown key 'speed'" in refused.stderr and str(bad) in refused.stderr
