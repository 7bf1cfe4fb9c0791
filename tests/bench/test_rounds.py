"""``--rounds N``: the rotating order, the folded ratios, and a real two-round run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtserver.bench.report import Check, Thresholds, evaluate_checks
from rtserver.bench.rounds import in_round, ratio_rounds, round_order, round_summary, rounds_table
from rtserver.bench.targets import Target

from .test_smoke import ROOT, SECRET, run_bench


def test_round_order_rotates_so_each_target_goes_first_in_turn() -> None:
    assert [round_order(2, k) for k in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert [round_order(3, k) for k in range(3)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert round_order(1, 5) == [0]
    assert round_order(0, 1) == []


def test_ratio_rounds_median_min_max_and_missing_rounds() -> None:
    per_round = [
        {"rtserver": {"node-ws": {"time": 0.5, "rss": None}}},
        {"rtserver": {"node-ws": {"time": 0.9, "rss": None}}},
        {"rtserver": {"node-ws": {"time": None, "rss": None}}},
        {"rtserver": {"node-ws": {"time": 0.6, "rss": None}}},
    ]
    folded = ratio_rounds(per_round)["rtserver"]["node-ws"]
    assert folded["time"] == {"rounds": [0.5, 0.9, None, 0.6], "measured": 3,
                              "median": 0.6, "min": 0.5, "max": 0.9}
    assert folded["rss"]["measured"] == 0 and folded["rss"]["median"] is None
    text = rounds_table("rtserver", "node-ws", folded)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["rtserver/node-ws", "(better)", "r1", "r2", "r3"]
    row = next(ln for ln in lines if ln.startswith("time"))
    assert row.split()[-7:] == ["0.50x", "0.90x", "-", "0.60x", "0.60x", "0.50x", "0.90x"]
    assert not any(ln.startswith("rss") for ln in lines)  # never measured: no row


def test_in_round_names_the_round_only_when_there_are_several() -> None:
    c = Check("rtserver", "lost", False, "1 (must be 0)")
    assert in_round([c], 0, 1) == [c]
    (named,) = in_round([c], 1, 3)
    assert named.target == "rtserver r2" and c.target == "rtserver"


def test_a_url_servers_rss_is_left_out_after_round_one_and_its_check_says_why() -> None:
    def summary(kind: str) -> dict[str, object]:
        return {"target": "rtserver", "kind": kind, "server_rss_per_connection_bytes": 7000.0}

    url = Target(name="rtserver", kind="url")
    spawned = Target(name="rtserver", kind="spawn", workers=2)
    assert round_summary(summary("url"), url, 0)["server_rss_per_connection_bytes"] == 7000.0
    assert round_summary(summary("spawn"), spawned, 3)["server_rss_per_connection_bytes"] == (
        7000.0)
    warm = round_summary(summary("url"), url, 1)
    assert warm["server_rss_per_connection_bytes"] is None and warm["workers"] is None
    assert "not restarted" in str(warm["server_rss_note"])
    th = Thresholds(1.0, 50.0, None, None, 10.0, None)
    warm.update({"connected": 1, "connections": 1, "lost": 0, "duplicates": 0,
                 "out_of_order": 0, "latency_ms": {}, "fanout_completion_ms": {}})
    rss = [c for c in evaluate_checks(warm, th, True) if c.name == "rss_per_connection"]
    assert rss and not rss[0].ok and rss[0].detail == warm["server_rss_note"]


@pytest.mark.timeout(120)
def test_two_rounds_against_a_peer_alternate_and_check_every_round(tmp_path: Path) -> None:
    code, out, summary = run_bench(
        tmp_path, "connect-storm", "--spawn", "--workers", "1", "-n", "200", "--peer", "naive",
        "--vs", "--rounds", "2", "--check", "--check-connect-s", "1e-9", timeout=110,
    )
    # the impossible connect-time limit fails in each round, named with its round
    assert code == 1, out
    failed = {c["target"] for c in summary["failed_checks"] if c["check"] == "connect_time"}
    assert failed == {"rtserver r1", "rtserver r2"}, summary["failed_checks"]
    report = json.loads(Path(summary["report"]).read_text())
    assert [r["order"] for r in report["rounds"]] == [["rtserver", "naive"],
                                                      ["naive", "rtserver"]]
    for r in report["rounds"]:
        assert [t["connected"] for t in r["targets"]] == [200, 200]
    time_ratio = report["ratio_rounds"]["rtserver"]["naive"]["time to all subscribed"]
    assert time_ratio["measured"] == 2 and all(v > 0 for v in time_ratio["rounds"])
    assert summary["ratio_medians"]["rtserver"]["naive"]["time to all subscribed"] == (
        time_ratio["median"])
    assert "rtserver/naive (better)" in out and "median" in out
    logs = sorted(p.name for p in (tmp_path / "report").glob("server-rtserver-*.log"))
    assert [n.rsplit("-", 1)[1] for n in logs] == ["r1.log", "r2.log"], logs


def test_rounds_need_vs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rtserver.bench", "connect-storm", "--spawn", "-n", "10",
         "--rounds", "2", "--report", str(tmp_path)],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "RTSERVER_JWT_SECRET": SECRET,
                       "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "--rounds" in proc.stderr and "Required action" in proc.stderr
