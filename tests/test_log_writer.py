"""The loop log writer (``server.log_writer = "loop"``): a full stderr never stops the loop.

Real servers (``python -m rtserver serve`` subprocesses) whose stderr is a pipe the
test stops reading, real websockets clients, and the writer's sinks on real pipes and
sockets in a uvloop loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import socket
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from websockets.asyncio.client import connect

from rtserver.log_writer import LoopWriter, LoopWriterSettings, open_sink
from tests.conftest import Client, ServerProcess, token

BLOCKED = "rtserver_log_writes_blocked_total"
BUFFERED = "rtserver_log_buffered_bytes"


async def metric(port: int, name: str) -> float:
    """The sum of ``name``'s series on ``GET /metrics`` (answered by the event loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(10):
        body = (await reader.read()).decode()
    writer.close()
    values = re.findall(rf"(?m)^{name}(?:{{[^}}]*}})? (\S+)$", body)
    assert values, f"{name} not in /metrics"
    return sum(float(v) for v in values)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Await ``check()`` (a coroutine function returning a truth value) until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def open_and_close(port: int) -> None:
    """One authenticated connection, closed: three or four log lines on the server."""
    async with asyncio.timeout(10):
        async with connect(f"ws://127.0.0.1:{port}/ws?token={token()}") as ws:
            client = Client(ws)
            await client.recv_type("connection")
            await client.recv_type("authenticated")


async def fill_stderr(port: int) -> int:
    """Open and close connections until the server found its stderr full; return how many."""
    for n in range(1, 5001):
        await open_and_close(port)
        if n % 20 == 0 and await metric(port, BLOCKED) > 0 and await metric(port, BUFFERED) > 0:
            return n
    raise AssertionError("5,000 connections did not fill a 64 KiB stderr pipe")


async def exchange(port: int) -> None:
    """Ping, subscribe, publish: each answer needs the server's event loop."""
    async with asyncio.timeout(10):
        tok = token(perms=["publish"], rooms=["bench:*"])
        async with connect(f"ws://127.0.0.1:{port}/ws?token={tok}") as ws:
            client = Client(ws)
            await client.recv_type("connection")
            await client.recv_type("authenticated")
            assert (await client.request({"type": "ping"}, "pong"))["type"] == "pong"
            await client.request({"type": "subscribe", "room": "bench:logs", "id": 1},
                                 "subscribed")
            await client.send({"type": "publish", "room": "bench:logs", "data": {"k": 1},
                               "id": 2})
            message = await client.recv_type("message")
            assert message["data"] == {"k": 1}


def parse(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def assert_contiguous(lines: list[dict[str, Any]]) -> None:
    """Every process's ``log_seq`` runs 1, 2, 3, ... in the order written: none lost."""
    by_worker: dict[int, list[int]] = {}
    for rec in lines:
        by_worker.setdefault(rec["worker"], []).append(rec["log_seq"])
    for worker, seqs in by_worker.items():
        assert seqs == list(range(1, len(seqs) + 1)), (worker, seqs[:5], len(seqs))


def server(tmp_path: Path, writer: str, workers: int) -> ServerProcess:
    cfg = tmp_path / "log.toml"
    cfg.write_text(f'[server]\nlog_writer = "{writer}"\n')
    return ServerProcess(["--domains", "", "--workers", str(workers), "--config", str(cfg)],
                         listening_lines=workers)


async def full_pipe_scenario(tmp_path: Path, writer: str) -> None:
    """Fill the unread stderr pipe, use the server, then read: every line, in order."""
    proc = server(tmp_path, writer, 1)
    try:
        port = proc.wait_listening()
        before = len(proc.lines)
        connections = await fill_stderr(port)
        await exchange(port)  # the loop answers while stderr is full
        assert proc.proc.stderr is not None
        chunks: list[bytes] = []
        fd = proc.proc.stderr.fileno()
        reader = threading.Thread(
            target=lambda: chunks.extend(iter(lambda: os.read(fd, 65536), b"")), daemon=True)
        reader.start()

        async def drained() -> bool:
            return await metric(port, BUFFERED) == 0

        await wait_for(drained, "the buffer to drain once stderr is read")
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
        await asyncio.to_thread(reader.join, 30)
    finally:
        proc.stop()
    pending = getattr(proc, "_pending", b"")
    lines = proc.lines + parse((pending + b"".join(chunks)).decode())
    assert_contiguous(lines)
    opened = [r for r in lines[before:] if r["event"] == "connection_state"
              and r.get("state") == "authenticated"]
    assert len(opened) == connections + 1
    assert lines[-1]["event"] == "stopped"


async def test_loop_writer_serves_on_a_full_stderr_pipe_and_loses_no_line(
        tmp_path: Path) -> None:
    await full_pipe_scenario(tmp_path, "loop")


async def test_lines_buffered_at_a_normal_shutdown_are_all_written(tmp_path: Path) -> None:
    proc = server(tmp_path, "loop", 2)
    try:
        port = proc.wait_listening()
        connections = await fill_stderr(port)
        assert await metric(port, BUFFERED) > 0
        proc.proc.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(proc.read_rest, 60)  # reading starts only now
    finally:
        proc.stop()
    assert status == 0
    assert_contiguous(proc.lines)
    opened = [r for r in proc.lines if r["event"] == "connection_state"
              and r.get("state") == "authenticated"]
    assert len(opened) == connections
    assert sum(r["event"] == "stopped" for r in proc.lines) == 2  # both workers' last lines
    assert proc.lines[-1]["worker"] == -1  # the supervisor's last line, after the workers'


async def test_direct_writer_blocks_the_event_loop_on_a_full_pipe(tmp_path: Path) -> None:
    """The control: the full pipe the tests above use stops a direct writer in write()."""
    proc = server(tmp_path, "direct", 1)
    tasks: list[asyncio.Task[None]] = []
    try:
        port = proc.wait_listening()
        tasks = [asyncio.create_task(open_and_close(port)) for _ in range(300)]

        async def in_pipe_write() -> bool:
            return "pipe_write" in Path(f"/proc/{proc.proc.pid}/wchan").read_text()

        await wait_for(in_pipe_write, "the server to block in pipe_write")
    finally:
        proc.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def _nonblock(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


@pytest.mark.parametrize("kind", ["pipe", "shared", "socket", "tty"])
def test_sink_keeps_the_loop_running_and_every_line_in_order(kind: str) -> None:
    ours, theirs = socket.socketpair()
    if kind == "socket":
        wfd, rfd = ours.fileno(), theirs.fileno()
    elif kind == "tty":
        rfd, wfd = pty.openpty()  # a terminal: the writer opens the pty's slave again
        tty.setraw(wfd)  # no newline translation, so the bytes read are the bytes written
    else:
        rfd, wfd = os.pipe()
    sink = open_sink(wfd, reopen=kind != "shared")
    assert sink.kind == kind
    warnings: list[tuple[int, int, int]] = []
    writer = LoopWriter(sink, LoopWriterSettings(warn_bytes=100_000, warn_interval=3600.0),
                        lambda *a: warnings.append(a))
    total = 20_000
    received: list[bytes] = []

    def read_all() -> None:
        expected = sum(len(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 80)) for i in range(total))
        got = 0
        while got < expected:
            chunk = os.read(rfd, 65536)
            received.append(chunk)
            got += len(chunk)

    async def main() -> None:
        for i in range(total):
            writer.write(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 80))
            if i % 100 == 0:
                await asyncio.sleep(0)
        # Reached with nobody reading ~2 MB: the loop never waited for the sink.
        assert writer.blocked > 0 and writer.buffered > 100_000
        assert not _nonblock(wfd), "O_NONBLOCK set on the shared description"
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while writer.buffered:
            assert time.monotonic() < deadline, "the buffer did not drain"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(reader.join, 30)

    uvloop.run(main())
    sink.close()
    for fd in (rfd, wfd) if kind != "socket" else ():
        os.close(fd)
    ours.close()
    theirs.close()
    assert [orjson.loads(line)["n"] for line in b"".join(received).splitlines()] == list(
        range(total))
    assert len(warnings) == 1 and warnings[0][0] > 100_000  # rate-limited: one per interval


def test_outside_the_loop_lines_are_written_after_the_buffer() -> None:
    rfd, wfd = os.pipe()
    writer = LoopWriter(open_sink(wfd), LoopWriterSettings(warn_bytes=1 << 30,
                                                           warn_interval=10.0), print)

    async def main() -> None:
        for i in range(3):
            writer.write(b"in-loop %d\n" % i)
        assert writer.buffered > 0  # not written yet: once per tick

    uvloop.run(main())  # the loop ends before its flush ran
    writer.write(b"after\n")  # no loop: the buffer first, then this line, synchronously
    assert writer.buffered == 0
    writer.sink.close()
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        assert f.read() == b"in-loop 0\nin-loop 1\nin-loop 2\nafter\n"


def test_a_server_whose_stderr_is_a_socket_writes_every_line(tmp_path: Path) -> None:
    """systemd's StandardError=journal gives a stream socket: send(MSG_DONTWAIT) on it."""
    import subprocess
    import sys

    from tests.conftest import SECRET

    ours, theirs = socket.socketpair()
    env = {**os.environ, "RTSERVER_JWT_SECRET": SECRET, "RTSERVER_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "rtserver", "serve", "--domains", ""],
                            env=env, stderr=ours.fileno(), stdout=subprocess.DEVNULL)
    ours.close()
    try:
        data = b""
        theirs.settimeout(30)
        while b'"event":"listening"' not in data:
            chunk = theirs.recv(65536)
            assert chunk, f"server exited before listening: {data[-2000:]!r}"
            data += chunk
        proc.send_signal(signal.SIGTERM)
        while chunk := theirs.recv(65536):
            data += chunk
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        theirs.close()
    lines = parse(data.decode())
    assert lines[0]["event"] == "log_writer" and lines[0]["sink"] == "socket"
    assert_contiguous(lines)
    assert lines[-1]["event"] == "stopped"
