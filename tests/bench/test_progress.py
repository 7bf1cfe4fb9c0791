"""Bench progress output: a live line on a terminal (pty), plain periodic lines otherwise."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtserver.bench.progress import Progress, Snapshot

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-progress-secret-0123456789abcdef0123456789"


def snap(delivered: int, phase: str = "publish") -> Snapshot:
    return Snapshot(target="rtserver", phase=phase, opened=90, asked=100, published=7,
                    delivered=delivered, errors=2, elapsed=3.25)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_the_interval() -> None:
    out = io.StringIO()
    clock = FakeClock()
    prog = Progress(True, stream=out, plain_interval=5.0, clock=clock)
    assert not prog.tty
    prog.show(snap(1))
    clock.now += 4.9
    prog.show(snap(2))  # too early: not written
    clock.now += 0.2
    prog.show(snap(3))
    prog.show(snap(4), force=True)  # the end of a phase is always written
    lines = out.getvalue().splitlines()
    assert [line.split("delivered ")[1].split()[0] for line in lines] == ["1", "3", "4"]
    assert lines[0] == ("bench rtserver publish  connections 90/100  published 7  delivered 1  "
                        "errors 2  elapsed 3.2s")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_disabled_writes_nothing() -> None:
    out = io.StringIO()
    Progress(False, stream=out).show(snap(1), force=True)
    assert out.getvalue() == ""


def read_pty(fd: int, until: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data:
        left = deadline - time.monotonic()
        assert left > 0, data
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data += os.read(fd, 4096)
    return data


def test_live_line_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as stream:
            prog = Progress(True, stream=stream)
            assert prog.tty
            prog.show(snap(5))
            first = read_pty(master, b"\x1b[K")
            prog.show(snap(6, "drain"), force=True)
            second = read_pty(master, b"\n")
    finally:
        os.close(master)
    assert first.startswith(b"\r") and b"delivered 5" in first and b"\n" not in first
    assert second.startswith(b"\r") and b"drain" in second and second.endswith(b"\x1b[K\r\n")


def bench_argv(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "rtserver.bench", "broadcast", "--peer", "naive", "-n", "20",
            "-r", "5", "-d", "1", "--drain-timeout", "2", "--ack-timeout", "3", "--no-plots",
            "--progress-interval", "0.3", "--report", str(tmp_path / "report")]


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    env["RTSERVER_JWT_SECRET"] = SECRET
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.timeout(90)
def test_bench_run_plain_progress_when_not_a_terminal(tmp_path: Path) -> None:
    proc = subprocess.run(bench_argv(tmp_path), cwd=ROOT, env=bench_env(), capture_output=True,
                          text=True, timeout=80, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bench naive ")]
    assert "\r" not in proc.stderr
    phases = [ln.split()[2] for ln in lines]
    assert {"connect", "publish", "drain"} <= set(phases), lines
    # The end of the connect phase shows every connection opened (20 receivers + 1 publisher).
    assert any(ln.split()[2] == "connect" and "connections 21/21" in ln for ln in lines), lines
    last = lines[-1]
    assert "published 5" in last and "delivered 100" in last and "errors 0" in last, last


@pytest.mark.timeout(90)
def test_bench_run_live_line_on_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(bench_argv(tmp_path), cwd=ROOT, env=bench_env(),
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 80)
            assert ready, data
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty closed it
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        assert proc.wait(timeout=30) == 0, data[-2000:]
    text = data.decode(errors="replace")
    assert "\rbench naive connect" in text and "\x1b[K" in text
    assert "connections 21/21" in text and "delivered 100" in text
