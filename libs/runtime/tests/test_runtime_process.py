"""tune_gc changes process-wide state, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from loket_runtime.process import tune_gc
before = gc.get_threshold()
tune_gc(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(threshold0: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold0)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_tune_gc_freezes_start_up_objects_and_raises_threshold() -> None:
    result = probe(10_000)
    after = result["after"]
    assert isinstance(after, list)
    assert after[0] == 10_000
    assert after[1] >= 20 and after[2] >= 20
    assert isinstance(result["frozen"], int) and result["frozen"] > 0


def test_tune_gc_zero_keeps_cpython_defaults() -> None:
    result = probe(0)
    assert result["after"] == result["before"]
    assert result["frozen"] == 0
