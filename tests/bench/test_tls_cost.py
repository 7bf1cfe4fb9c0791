"""The TLS cost benchmark runs end to end with tiny numbers (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_tls_cost_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rtserver.bench.tls_cost", "--connections", "10",
         "--deliveries", "200", "--repeat", "1", "--connect-timeout", "30",
         "--sync-timeout", "30"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "N = 10 connections" in out
    assert re.search(r"\| plain \| [\d.]+ \| direct_sends=200 transport_writes=0 ", out), out
    assert re.search(r"\| tls \| [\d.]+ \| direct_sends=0 transport_writes=200 ", out), out
    assert re.search(r"TLS / plain CPU per delivery: [\d.]+x", out), out
