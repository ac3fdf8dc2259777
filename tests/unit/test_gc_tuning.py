"""Server processes freeze their start-up heap and collect the young generation less often."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from homeskillet.runtime import tune_gc_for_serving
before = gc.get_threshold()
tune_gc_for_serving()
after = gc.get_threshold()
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
assert after == (10_000, before[1], before[2]), (before, after)
print("ok")
"""


def test_tuning_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    # In a child process: the tuning is process-wide and must not leak into the test run.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
