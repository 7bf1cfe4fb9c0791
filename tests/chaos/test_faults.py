"""The fault helpers against real processes: a hub-like Unix server in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from rtserver.bench.chaos_faults import (
    ChaosError,
    cut_hub_connections,
    hub_connection_fds,
    pid_alive,
    worker_pids,
)

pytestmark = pytest.mark.timeout(30)

SERVER = r"""
import socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen()
print("listening", flush=True)
conns = [srv.accept()[0] for _ in range(2)]
print("accepted", flush=True)
for c in conns:
    print("eof" if c.recv(10) == b"" else "data", flush=True)
"""


def test_cut_hub_connections_gives_both_ends_a_connection_loss(tmp_path: Path) -> None:
    path = str(tmp_path / "hub.sock")
    child = subprocess.Popen([sys.executable, "-c", SERVER, path], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "listening"
        clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        for c in clients:
            c.connect(path)
        assert child.stdout.readline().strip() == "accepted"
        deadline = time.monotonic() + 5
        while len(hub_connection_fds(child.pid, path)) < 2:
            assert time.monotonic() < deadline, "accepted sockets not visible in /proc"
            time.sleep(0.05)
        assert cut_hub_connections(child.pid, path) == 2
        # The child (the "supervisor") reads EOF on both; the clients ("workers") too.
        assert [child.stdout.readline().strip() for _ in range(2)] == ["eof", "eof"]
        for c in clients:
            c.settimeout(5)
            assert c.recv(10) == b""
            c.close()
        assert child.wait(timeout=5) == 0
        with pytest.raises(ChaosError, match="no connected hub socket"):
            cut_hub_connections(os.getpid(), path)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_worker_pids_takes_the_latest_start_per_worker(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    lines = [{"event": "worker_started", "worker_id": 0, "pid": 11},
             {"event": "worker_started", "worker_id": 1, "pid": 12},
             {"event": "worker_exited", "worker_id": 0, "pid": 11},
             {"event": "worker_started", "worker_id": 0, "pid": 13}]
    log.write_bytes(b"not json\n" + b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    assert worker_pids(log) == {0: 13, 1: 12}
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)
