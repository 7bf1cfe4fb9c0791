"""The connect micro-benchmark runs on both buses and checks what it measures (tiny run)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from rtserver.bench.connect_micro import STAGES


@pytest.mark.parametrize("bus", ["local", "embedded"])
def test_connect_micro_small_run(bus: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rtserver.bench.connect_micro", "--connections", "300",
         "--batch", "50", "--repeat", "2", "--processes", "1", "--bus", bus, "--json"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert report["bus"] == bus and list(report["trees"]) == ["this"]
    this = report["trees"]["this"]
    assert len(this["rounds"]) == 2
    for stage in STAGES:
        assert this["summary"][stage]["best"] > 0, stage
    # every transition of every connection was logged once
    assert this["log_lines_per_connection"] == {
        "connection_state:connecting": 1, "connection_state:authenticated": 1,
        "connection_state:closed": 1}
