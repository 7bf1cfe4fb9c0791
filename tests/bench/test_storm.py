"""Short ``rtserver bench storm`` runs: both faults, both jitter modes, and a tiny history.

Each run is a real ``python -m rtserver.bench storm`` process against a spawned
``rtserver serve --workers 2``: 200 receivers in rooms of 10 and a publisher process,
a drain (SIGTERM, restart on the same port) and a worker SIGKILLed, the clients
reconnecting with backoff and ``since``. Short backoff caps keep the runs to seconds;
the assertions read the JSON report (no timing assertions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "storm-test-secret-0123456789abcdef0123456789"

pytestmark = pytest.mark.timeout(120)


def run_storm(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Run the scenario; return (exit status, output, the JSON report)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RTSERVER_JWT_SECRET": SECRET,
           "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "rtserver.bench", "storm", "--connections", "200",
         "--room-size", "10", "--backoff-min", "0.1", "--backoff-max", "1", "--settle", "0.5",
         "--recover-timeout", "40", "--drain-timeout", "15", "--report", str(report),
         "--no-progress", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110, check=False)
    out = proc.stdout + "\n--- stderr ---\n" + proc.stderr[-6000:]
    files = sorted(report.glob("bench-storm-*.json"))
    assert files, f"no report written:\n{out}"
    return proc.returncode, out, json.loads(files[-1].read_text())


def test_both_faults_both_jitters(tmp_path: Path) -> None:
    code, out, doc = run_storm(tmp_path, "--fault", "both", "--jitter", "both")
    assert code == 0 and doc["ok"], out
    storms = {(s["fault"], s["jitter"]): s for s in doc["storms"]}
    assert set(storms) == {(f, j) for f in ("drain", "kill-worker") for j in ("full", "none")}
    for (fault, jitter), s in storms.items():
        where = f"{fault}/{jitter}\n{out}"
        assert s["lost"] == 0 and s["duplicates"] == 0 and s["out_of_order"] == 0, where
        assert s["affected"] > 0 and s["back"] == s["affected"], where
        assert s["t99_s"] is not None and s["t100_s"] is not None, where
        assert s["t99_s"] <= s["t100_s"], where
        assert s["attempts"] >= s["affected"], where
        assert s["server_cpu_s"] > 0, where
        assert s["handshakes"]["worker_max"], where
        assert s["publisher"]["acked"] > 0, where
        if fault == "drain":
            # The embedded bus restarts with the server: every room has a new epoch, and
            # every resubscribe says so explicitly.
            assert s["affected"] == 200, where
            assert s["closes"] == {"close 1012": 200}, where
            assert s["not_recovered"] == {"epoch_changed": 200}, where
            assert s["server_listening_s"] > 0, where
        else:
            # The hub survives a worker: its clients recover from the history.
            assert s["recovered"] == s["affected"] and not s["not_recovered"], where
    assert set(doc["ratios"]) == {"drain", "kill-worker"}, out
    assert "time to 99% back" in out and "full jitter / no jitter" in out, out


def test_tiny_history_reports_recovered_false(tmp_path: Path) -> None:
    # 20 messages/s per room, 2 kept: a client down for its 0.5 s delay cannot recover.
    code, out, doc = run_storm(tmp_path, "--fault", "kill-worker", "--jitter", "none",
                               "--room-rate", "20", "--history-size", "2",
                               "--backoff-min", "0.5")
    assert code == 0 and doc["ok"], out
    (s,) = doc["storms"]
    # The publisher's connections were spread over both workers before the kill, so
    # some rooms kept publishing while their clients were away.
    assert len(s["publisher_workers"]) == 2, out
    # Rooms whose publisher was on the killed worker missed fewer messages: those
    # clients may recover; every other answer is an explicit history_trimmed.
    assert set(s["not_recovered"]) == {"history_trimmed"}, out
    assert s["recovered"] + s["not_recovered"]["history_trimmed"] == s["affected"] > 0, out
    assert s["explicit_skipped"] > 0, out
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["out_of_order"] == 0, out


def test_backoff_is_the_sdks() -> None:
    import random

    from rtserver.bench.storm_client import Backoff

    b = Backoff(0.5, 20.0, random.Random(1))
    b.jitter = "none"
    assert [b.delay(a) for a in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    b.jitter = "full"
    for a in range(8):
        cap = min(20.0, 0.5 * 2 ** a)
        delays = [b.delay(a) for _ in range(200)]
        assert all(0 <= d < cap for d in delays) and max(delays) > cap / 2
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0, random.Random(1))
