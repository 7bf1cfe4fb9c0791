"""Smoke runs of the load harness against reference peers and a spawned rtserver.

Each run is a real `python -m rtserver.bench` process with a few hundred real connections on
loopback for about a second of publishing. No timing assertions: thresholds that could
fail on a loaded machine are either disabled or set impossibly low on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-smoke-secret-0123456789abcdef0123456789"


def run_bench(tmp_path: Path, *args: str, timeout: float = 90.0) -> tuple[int, str, dict[str, Any]]:
    """Run the harness; return (exit status, stdout, the one-line JSON summary)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "RTSERVER_JWT_SECRET": SECRET,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    import os

    for key in ("PYENV_ROOT", "PYENV_VERSION", "LANG"):
        if key in os.environ:
            env[key] = os.environ[key]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtserver.bench",
            *args,
            "--report",
            str(tmp_path / "report"),
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON summary; stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.returncode, proc.stdout, json.loads(lines[-1])


SMALL = ("-n", "200", "-r", "20", "-d", "1", "--drain-timeout", "2", "--ack-timeout", "3")


@pytest.mark.timeout(90)
def test_clean_peer_run_produces_table_report_and_plots(tmp_path: Path) -> None:
    code, out, summary = run_bench(
        tmp_path, "broadcast", "--peer", "naive", "--peer", "websockets-broadcast", *SMALL
    )
    assert code == 0, out
    assert summary["ok"] is True
    for name in ("naive", "websockets-broadcast"):
        t = summary["targets"][name]
        assert t["connected"] == 200
        assert t["lost"] == 0 and t["duplicates"] == 0 and t["out_of_order"] == 0
        assert t["p99_ms"] is not None and t["p99_ms"] > 0
    report = json.loads(Path(summary["report"]).read_text())
    assert report["clock"].startswith("latency = kernel receive timestamp")
    for target in report["targets"]:
        # every acked broadcast reached all 200 members
        assert target["deliveries"] == 200 * target["acked"] > 0
        assert target["fanout_publishes"] == target["acked"]
        assert target["server_cpu_s"] >= 0 and target["server_rss_per_connection_bytes"] is not None
    assert len(report["plots"]) == 2
    for p in report["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency p99 ms" in out and "fan-out completion p99 ms" in out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("fault", "every", "extra", "counted", "clean"), [
    # the peer skips every 97th delivery attempt; 200 receivers spread over 2 generators
    ("drop-every", 97, ("--generators", "2"), "lost", "duplicates"),
    # every 89th delivery attempt is sent twice (sources bound to 127.0.0.2 and .3)
    ("duplicate-every", 89, ("--source-addrs", "on"), "duplicates", "lost"),
])
def test_injected_fault_is_detected_and_fails_the_run(
    tmp_path: Path, fault: str, every: int, extra: tuple[str, ...], counted: str, clean: str,
) -> None:
    code, out, summary = run_bench(
        tmp_path, "broadcast", "--peer", "naive", "--inject-peer-fault", f"{fault}={every}",
        *extra, *SMALL,
    )
    assert code == 1, out
    t = summary["targets"]["naive"]
    acked = json.loads(Path(summary["report"]).read_text())["targets"][0]["acked"]
    assert t[counted] == (200 * acked) // every > 0
    assert t[clean] == 0 and t["out_of_order"] == 0
    assert any(c["check"] == counted and not c["ok"] for c in summary["failed_checks"])
    assert "FAIL  naive" in out


@pytest.mark.timeout(90)
def test_unacknowledged_publishes_fail_the_run(tmp_path: Path) -> None:
    # every 5th publish is delivered but never acknowledged: nothing is lost at the
    # receivers, and the run still fails (a publisher was not answered)
    code, out, summary = run_bench(
        tmp_path, "broadcast", "--peer", "naive", "--inject-peer-fault", "no-ack-every=5",
        *SMALL,
    )
    assert code == 1, out
    report = json.loads(Path(summary["report"]).read_text())["targets"][0]
    assert report["published"] == 20
    assert report["acked"] == 16
    assert summary["targets"]["naive"]["lost"] == 0
    failed = [c for c in summary["failed_checks"] if c["check"] == "acks"]
    assert failed and failed[0]["detail"].startswith("16 of 20 publishes acknowledged"), failed


@pytest.mark.timeout(90)
def test_check_fails_with_an_impossibly_low_threshold(tmp_path: Path) -> None:
    code, out, summary = run_bench(
        tmp_path,
        "rooms",
        "--peer",
        "websockets-broadcast",
        "-n",
        "200",
        "--room-size",
        "5",
        "-r",
        "200",
        "-d",
        "1",
        "--check",
        "--check-p99-ms",
        "0.000001",
    )
    assert code == 1, out
    failed = {c["check"] for c in summary["failed_checks"]}
    assert failed == {"latency_p99"}
    assert "over by" in out
    assert summary["targets"]["websockets-broadcast"]["lost"] == 0


@pytest.mark.timeout(90)
def test_rtserver_spawned_vs_peer_throughput_closed_loop(tmp_path: Path) -> None:
    # The server must exist in this repository: an import failure fails the test.
    import rtserver.cli
    import rtserver.server  # noqa: F401

    code, out, summary = run_bench(
        tmp_path,
        "throughput",
        "--spawn",
        "--workers",
        "1",
        "--peer",
        "websockets-broadcast",
        "--vs",
        "-n",
        "200",
        "--room-size",
        "10",
        "-d",
        "1",
        "--check",
        "--check-p99-ms",
        "1e9",
    )
    assert code == 0, out
    rt = summary["targets"]["rtserver"]
    assert rt["connected"] == 200
    assert rt["lost"] == 0 and rt["duplicates"] == 0 and rt["out_of_order"] == 0
    assert rt["deliveries_per_s"] > 0
    assert "rtserver/websockets-broadcast" in out


@pytest.mark.timeout(90)
def test_rtserver_users_and_connect_storm(tmp_path: Path) -> None:
    import rtserver.server  # noqa: F401

    code, out, summary = run_bench(
        tmp_path,
        "users",
        "--spawn",
        "-n",
        "150",
        "--per-user",
        "3",
        "-r",
        "50",
        "-d",
        "1",
        "--check",
        "--check-p99-ms",
        "1e9",
    )
    assert code == 0, out
    assert summary["targets"]["rtserver"]["connected"] == 150
    code, out, summary = run_bench(
        tmp_path,
        "connect-storm",
        "--spawn",
        "--workers",
        "2",
        "-n",
        "300",
        "--check",
        "--check-connect-s",
        "1e9",
    )
    assert code == 0, out
    rt = summary["targets"]["rtserver"]
    assert rt["connected"] == 300 and rt["time_to_all_subscribed_s"] > 0
    report = json.loads(Path(summary["report"]).read_text())
    # supervisor + 2 workers at least: CPU and RSS are summed over all of them
    assert len(report["targets"][0]["server_pids"]) >= 3
    assert "did not start its workers" not in out


@pytest.mark.timeout(90)
def test_url_target_with_server_pid_and_node_peer_or_notice(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, RTSERVER_JWT_SECRET=SECRET, PYTHONPATH=str(ROOT))
    log = open(tmp_path / "peer.log", "wb")  # noqa: SIM115 - closed below
    peer = subprocess.Popen(
        [sys.executable, "-m", "rtserver.bench.peers.pyserver", "--mode", "broadcast",
         "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        port = None
        for _ in range(200):
            text = (tmp_path / "peer.log").read_text()
            if '"listening"' in text:
                port = json.loads(text.splitlines()[0])["port"]
                break
            if peer.poll() is not None:
                break
            time.sleep(0.05)
        assert port is not None, (tmp_path / "peer.log").read_text()
        code, out, summary = run_bench(
            tmp_path,
            "rooms",
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--server-pid",
            str(peer.pid),
            "--peer",
            "node-ws",
            "--vs",
            "-n",
            "100",
            "-r",
            "100",
            "-d",
            "1",
        )
    finally:
        peer.terminate()
        peer.wait(timeout=15)
        log.close()
    assert code == 0, out
    report = json.loads(Path(summary["report"]).read_text())
    rt = report["targets"][0]
    assert rt["target"] == "rtserver" and rt["kind"] == "url"
    assert rt["server_pids"] == [peer.pid]
    # Read from /proc for that pid: RSS is never 0; CPU is counted in clock ticks (10 ms),
    # and 500 deliveries in one second can take less than one (measured 0.0 in a CI run).
    assert rt["server_rss_connected_bytes"] > 0 and rt["server_cpu_s"] >= 0
    assert rt["deliveries"] == 5 * rt["acked"] > 0
    if "node-ws" in summary["targets"]:
        assert summary["targets"]["node-ws"]["lost"] == 0
        assert "rtserver/node-ws" in out
    else:
        assert "peer node-ws skipped:" in out and report["skipped_peers"]["node-ws"]
