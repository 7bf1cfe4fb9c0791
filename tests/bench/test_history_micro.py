"""The history figures' script runs and checks what it measures (tiny numbers)."""

from __future__ import annotations

import subprocess
import sys

import orjson


def test_history_micro_small_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rtserver.bench.history_micro", "--rooms", "50", "--history",
         "10", "--publishes", "5000", "--rounds", "1", "--clients", "20", "--client-rooms", "3",
         "--recover-rooms", "10", "--missed", "4"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert report["recovery"]["replayed_messages"] == 20 * 3 * 4
    assert report["memory"]["bytes_per_message"] > 10
    assert report["publish_cost"]["history_on_ns"] > 0
