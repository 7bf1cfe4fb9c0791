"""Supervisor: real worker processes (tests/bus/supervisor_app.py) on a shared SO_REUSEPORT port."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rtserver.config import resolve_workers
from rtserver.supervisor import (
    EXIT_CRASH_LOOP,
    EXIT_DRAIN_INCOMPLETE,
    EXIT_OK,
)
from rtserver.worker_sockets import make_reuseport_socket

from .conftest import App

pytestmark = pytest.mark.timeout(60)

APP = Path(__file__).with_name("supervisor_app.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def start_app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    apps: list[App] = []

    async def start(mode: str, workers: int = 2, runtime: str | None = None) -> App:
        if runtime is None:
            runtime = os.path.join("/tmp", f"rtsup-{os.getpid()}-{len(apps)}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(APP), mode, runtime, str(workers),
            stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        app = App(proc)
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.finish()


async def test_shared_port_respawn_cluster_status_and_drain(start_app: Any) -> None:
    app = await start_app("ok")
    await app.wait_events("listening", 2)
    seen: dict[int, int] = {}
    for _ in range(40):
        answer = await app.ask()
        seen[answer["worker"]] = answer["pid"]
    # SO_REUSEPORT spreads connections over both workers on one port.
    assert set(seen) == {0, 1}
    health = await app.ask(b"health")
    assert health["status"] == "ok", health
    assert health["workers"]["0"]["pid"] == seen[0]

    os.kill(seen[1], signal.SIGKILL)
    exited = await app.wait_events("worker_exited", 1)
    assert exited[0]["worker_id"] == 1 and exited[0]["status"] == "signal SIGKILL"
    await app.wait_events("listening", 3)
    # Worker 0 kept serving; worker 1 is back with a new pid.
    new_pids: dict[int, int] = {}
    for _ in range(60):
        answer = await app.ask()
        new_pids[answer["worker"]] = answer["pid"]
        if len(new_pids) == 2:
            break
    assert new_pids[0] == seen[0]
    assert new_pids[1] != seen[1]
    metrics = await app.ask(b"metrics")
    restarts = 'rtserver_supervisor_worker_restarts_total{worker_id="1",worker="supervisor"} 1'
    assert restarts in metrics
    assert 'worker="0"' in metrics and 'worker="1"' in metrics
    assert metrics.count("# TYPE rtserver_bus_hub_frames_total counter") == 1

    app.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(app.proc.wait(), 20) == EXIT_OK
    await app.reader
    assert len(app.events("worker_drained")) == 2
    assert [e["status"] for e in app.events("worker_stopped")] == ["exit 0", "exit 0"]


async def test_crash_loop_stops_with_nonzero_exit(start_app: Any) -> None:
    app = await start_app("crash", 1, runtime="-")  # "-": a temporary runtime dir
    assert await asyncio.wait_for(app.proc.wait(), 40) == EXIT_CRASH_LOOP
    await app.reader
    hub_socket = app.events("supervisor_started")[0]["hub_socket"]
    assert "/rtserver-" in hub_socket and not os.path.exists(os.path.dirname(hub_socket))
    crash = app.events("crash_loop")
    assert len(crash) == 1 and "Required action" in crash[0]["message"]
    # max_restarts = 3: the first exit and three restarts, the fourth restart refused.
    assert len(app.events("worker_exited")) == 4
    assert len(app.events("worker_restarting")) == 3


async def test_drain_timeout_kills_and_reports(start_app: Any) -> None:
    app = await start_app("stuck", 1)
    await app.wait_events("listening", 1)
    app.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(app.proc.wait(), 30) == EXIT_DRAIN_INCOMPLETE
    await app.reader
    assert len(app.events("drain_timeout")) == 1
    assert app.events("worker_stopped")[0]["status"] == "signal SIGKILL"


async def test_workers_drain_when_the_supervisor_is_killed(start_app: Any) -> None:
    app = await start_app("ok")
    await app.wait_events("listening", 2)
    app.proc.send_signal(signal.SIGKILL)
    # The workers share the supervisor's stderr: their drain lines still arrive.
    drained = await app.wait_events("worker_drained", 2)
    assert {line["worker"] for line in drained} == {0, 1}


def test_make_reuseport_socket_and_resolve_workers() -> None:
    placeholder = make_reuseport_socket("127.0.0.1", 0)
    port = placeholder.getsockname()[1]
    a = make_reuseport_socket("127.0.0.1", port, 16)
    b = make_reuseport_socket("127.0.0.1", port, 16)
    try:
        assert a.getsockname()[1] == b.getsockname()[1] == port
    finally:
        for s in (placeholder, a, b):
            s.close()
    assert resolve_workers("auto") == os.cpu_count()
    assert resolve_workers("3") == 3
    with pytest.raises(ValueError, match="Required action"):
        resolve_workers(0)
