"""The commands a newcomer runs, as subprocesses: demo, ask, covenant check."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeskillet.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_prints_its_table_and_exits_0():
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert "one row per fragment" in r.stdout
    assert "mlx/local" in r.stdout and "degraded to hs-tiny" in r.stdout
    assert "8 queries, 7 answered, 1 explicit error(s)" in r.stdout


def test_ask_prints_the_answer_and_what_served_it():
    r = run("ask", "What is a strike? Who pays?", "--covenant", "gemma-2b")
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
