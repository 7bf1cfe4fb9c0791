"""The fan-out micro-benchmark runs end to end (tiny N; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_fanout_micro_runs() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtserver.bench.fanout_micro",
            "--connections",
            "20,40",
            "--deliveries",
            "400",
            "--repeat",
            "1",
            "--connect-timeout",
            "30",
            "--sync-timeout",
            "30",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for n in ("N = 20 connections", "N = 40 connections"):
        assert n in out
    for case in ("| floor |", "| compiled |", "| python |", "| broadcast |", "| await send |"):
        assert out.count(case) == 2, case
    assert "compiled (burst)" in out
    # Every delivery was written by the compiled core, none skipped or dropped.
    assert "skipped_not_open=0, dropped_slow=0" in out
