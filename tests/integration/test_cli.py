"""The commands a newcomer runs, as subprocesses: demo, ask, covenant check."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeskillet.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_prints_its_table_and_exits_0():
    t0 = time.monotonic()
    r = run("demo")
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "one row per fragment" in out.lower()
    # A fragment row of the table: its pool column, then a step and a cost (the fleet table has neither).
    for provider in ("hostedai", "vastai", "openrouter", "ollama", "mlx"):
        row = rf"^│[ .\d]*│ {provider}/\S+\s*│[^│]+│ +\d+\.\d{{7}} │"
        assert re.search(row, out, re.M), f"no fragment row served by {provider}"
    assert "failover: hostedai/preemptible-us-east was evicted mid-inference (billed $0.0000" in out
    assert "re-struck on vastai/rtx4090-spot" in out
    assert "degraded: covenant mistral-7b served by mlx/local with smollm2-135m" in out
    # The answers table: the local model's real words, the simulators' marked as simulated.
    assert re.search(r"│ real model:.*│ What is the capital of France\? +│ The capital of France is Paris", out)
    assert "│ simulated (seeded filler)" in out and "real model: SmolLM2-135M via" in out
    assert out.count("degraded: covenant") == 1  # OpenRouter's own id for qwen-70b is not a degradation
    assert "explicit error: no_pool, unmet cost.max_usd_per_request" in out
    assert "won a Contract Net round" in out and "reserve → query → release" in out
    assert "11 queries, 10 answered, 1 explicit error(s)" in out and "agrees with the verdicts" in out
    assert "demo check failed" not in out and "sim-key" not in out + r.stderr
    assert wall < 60, f"the demo took {wall:.1f} s"


def test_ask_answers_with_the_real_local_model(local_model):
    r = run("ask", "What is the capital of France?", "--max-tokens", "16")
    assert r.returncode == 0, r.stderr
    answer, *rest = r.stdout.splitlines()
    assert "Paris" in answer and answer.rstrip().endswith(".")  # a sentence naming Paris, greedy
    assert "pool mlx/local" in rest[0]


def test_ask_prints_the_answer_and_what_served_it():
    r = run("ask", "What is a strike? Who pays?", "--covenant", "gemma-2b", "--echo-pools")
    assert r.returncode == 0, r.stderr
    assert "1. What is a strike?" in r.stdout
    assert r.stdout.count("-- covenant gemma-2b") == 2 and "pool echo/standard-us-east" in r.stdout


def test_covenant_check_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[resources]\nmodel = "m"\n[qos]\nlatency_targt_ms = 5\n')
    r = run("covenant", "check", "covenants", str(bad))
    assert r.returncode == 1
    assert "ok    covenants/qwen-70b.toml" in r.stdout
    assert f"{bad}: unknown key 'qos.latency_targt_ms'" in r.stdout
