"""``/admin/rooms``, ``/admin/connections`` and ``/admin/presence`` answer for every worker
of a real ``rtserver serve --workers 2`` (the hub asks each worker) and for every node of two
``rtserver serve --redis`` sharing one Redis (every worker asked through Redis): a room whose
members are on the other worker or node is listed with its messages/s and history depth, a
connection there is found with its state history, and a worker that does not answer
(SIGSTOPped) is named in ``missing``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from conftest import Client, ServerProcess, token
from tests.admin.test_console_chromium import _drain

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
ADMIN = token(perms=["admin:monitor"])
#: messages/s is averaged over this window: N publishes within it read N / RATE_WINDOW.
RATE_WINDOW = 60
CONFIG = f"""
[admin]
room_rate_window = {RATE_WINDOW}
[workers]
collect_timeout = 3.0
[namespaces.probe]
subscribe = {{ permissions = [], access = "grant" }}
publish = {{ permissions = ["publish"], access = "grant" }}
room_events = false
presence = true
"""


REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def running(args: list[str], config: Path, listening: int) -> Iterator[ServerProcess]:
    """``rtserver serve ARGS --config CONFIG`` with no domain (see :func:`serve_drained`)."""
    with serve_drained([*args, "--domains", "", "--config", str(config)], listening,
                       60.0) as proc:
        yield proc


@contextlib.contextmanager
def serve_drained(argv: list[str], listening: int, ready: float) -> Iterator[ServerProcess]:
    """``rtserver serve ARGV``, ``listening`` listening lines within ``ready`` seconds, its
    log drained, stopped with SIGTERM."""
    proc = ServerProcess(argv,
                         env={"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])},
                         listening_lines=listening)
    stop = threading.Event()
    try:
        proc.wait_listening(ready)
        threading.Thread(target=_drain, args=(proc, stop), daemon=True).start()
        yield proc
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            proc.proc.send_signal(signal.SIGTERM)
        proc.proc.wait(30.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("cluster") / "rtserver.toml"
    config.write_text(CONFIG)
    with running(["--workers", "2"], config, 2) as proc:
        yield proc


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    """Two nodes (one worker each) sharing a Redis key prefix of their own."""
    prefix = f"rtadmq-{os.getpid()}-{id(tmp_path_factory)}"
    config = tmp_path_factory.mktemp("nodes") / "rtserver.toml"
    config.write_text(CONFIG + f'[bus]\nredis_key_prefix = "{prefix}"\n')
    try:
        with running(["--redis", REDIS_URL], config, 1) as a, \
                running(["--redis", REDIS_URL], config, 1) as b:
            yield a, b
    finally:
        async def clean() -> None:
            client = aioredis.from_url(REDIS_URL)
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        asyncio.run(clean())


def node_id(proc: ServerProcess) -> str:
    """The Redis node id of the (one) worker of ``proc``."""
    [event] = [e for e in proc.lines if e.get("event") == "bus_connected" and "node" in e]
    return str(event["node"])


async def http_get(port: int, path: str, tok: str = ADMIN) -> tuple[int, dict[str, Any]]:
    """One ``GET`` on a new TCP connection (SO_REUSEPORT picks the worker)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}"
                     "\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


async def get_from(port: int, path: str, worker: str) -> dict[str, Any]:
    """The answer of ``path`` given by ``worker`` (new connections until it answers one)."""
    for _ in range(200):
        status, doc = await http_get(port, path)
        assert status == 200, doc
        if str(doc["answered_by"]) == worker:
            return doc
    raise AssertionError(f"worker {worker} never answered {path}")


async def client_on(port: int, worker: str, tok: str, opened: list[Any]) -> tuple[Client, str]:
    """A WebSocket client accepted by ``worker``, and its connection id."""
    for _ in range(200):
        ws = await connect(f"ws://127.0.0.1:{port}/ws?token={tok}", compression=None)
        client = Client(ws)
        welcome = await client.recv(10)
        if str(welcome["worker"]) != worker:
            await ws.close()
            continue
        opened.append(ws)
        assert (await client.recv(10))["type"] == "authenticated"
        return client, welcome["connection_id"]
    raise AssertionError(f"no connection was accepted by worker {worker}")


@pytest.fixture
async def opened() -> Any:
    conns: list[Any] = []
    yield conns
    for ws in conns:
        await ws.close()


async def test_room_on_the_other_worker_with_rate_and_history(cluster: ServerProcess,
                                                               opened: list[Any]) -> None:
    port = cluster.port
    member, _ = await client_on(port, "1", token(rooms=["probe:*"]), opened)
    await member.request({"type": "subscribe", "room": "probe:far", "id": 1}, "subscribed")
    publisher, _ = await client_on(port, "0", token(perms=["publish"], rooms=["probe:*"]),
                                   opened)
    n = 12
    for i in range(1, n + 1):
        await publisher.request({"type": "publish", "room": "probe:far", "data": {"i": i},
                                 "id": i}, "ack")
    for i in range(1, n + 1):
        assert (await member.recv_type("message"))["seq"] == i
    doc = await get_from(port, "/admin/rooms?q=probe:far", "0")
    assert doc["missing"] == [] and doc["expected_workers"] == 2 and doc["failed"] == {}
    assert set(doc["workers"]) == {"0", "1"} and doc["rate_window"] == RATE_WINDOW
    [room] = doc["rooms"]
    assert room["room"] == "probe:far" and room["members"] == 1
    assert room["members_by_worker"] == {"1": 1} and room["last_seq"] == n
    assert room["publications_counted"] == n
    assert room["messages_per_second"] == pytest.approx(n / RATE_WINDOW)
    assert room["history"]["held"] == n
    assert (room["history"]["first_seq"], room["history"]["last_seq"]) == (1, n)
    assert room["history"]["epoch"] == room["epoch"]
    assert doc["history_error"] is None
    assert doc["history_bounds"] == {"history_size": 100, "history_max_bytes": 1048576,
                                     "history_ttl": 300.0}


async def test_connection_on_the_other_worker_with_state_history(
        cluster: ServerProcess, opened: list[Any]) -> None:
    port = cluster.port
    _, conn_id = await client_on(port, "1", token(rooms=["probe:*"]), opened)
    doc = await get_from(port, f"/admin/connections?connection_id={conn_id}", "0")
    assert doc["missing"] == [] and set(doc["workers"]) == {"0", "1"}
    [entry] = doc["connections"]
    assert entry["connection_id"] == conn_id and entry["worker"] == 1
    history = entry["state_history"]
    assert [h["state"] for h in history] == ["connecting", "authenticated"]
    assert history[0]["reason"] == "accepted" and history[1]["reason"] == "token verified"
    assert history[0]["at"] <= history[1]["at"]
    assert entry["state_history_dropped"] == 0


async def test_presence_counts_every_worker(cluster: ServerProcess, opened: list[Any]) -> None:
    port = cluster.port
    for worker in ("0", "1"):
        client, _ = await client_on(port, worker, token(rooms=["probe:*"]), opened)
        await client.request({"type": "subscribe", "room": "probe:here", "id": 1}, "subscribed")
    for worker in ("0", "1"):
        doc = await get_from(port, "/admin/presence?room=probe:here", worker)
        assert doc["count"] == 2 and len(doc["members"]) == 2
        assert doc["members_by_worker"] == {"0": 1, "1": 1} and doc["missing"] == []
        assert doc["workers"] == {"0": {"members": 1}, "1": {"members": 1}}


async def test_a_worker_that_does_not_answer_is_named(cluster: ServerProcess,
                                                     opened: list[Any]) -> None:
    port = cluster.port
    _, conn_id = await client_on(port, "0", token(rooms=["probe:*"]), opened)
    pids = {str(r["worker_id"]): r["pid"] for r in cluster.events("worker_started")}
    os.kill(pids["1"], signal.SIGSTOP)
    tasks: list[asyncio.Task[tuple[int, dict[str, Any]]]] = []
    try:
        # Connections the kernel hands to the stopped worker wait; the first answer comes
        # from worker 0, after the hub's collect_timeout.
        tasks = [asyncio.create_task(http_get(port, "/admin/connections?state=authenticated"))
                 for _ in range(16)]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=60)
        assert done, "no worker answered"
        status, doc = next(iter(done)).result()
    finally:
        os.kill(pids["1"], signal.SIGCONT)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert status == 200, doc
    assert doc["answered_by"] == 0 and doc["missing"] == ["1"] and set(doc["workers"]) == {"0"}
    assert conn_id in {c["connection_id"] for c in doc["connections"]}


async def test_redis_every_node_answers(nodes: tuple[ServerProcess, ...],
                                        opened: list[Any]) -> None:
    a, b = nodes
    far = node_id(b)
    member, conn_id = await client_on(b.port, "0", token(rooms=["probe:*"]), opened)
    await member.request({"type": "subscribe", "room": "probe:node", "id": 1}, "subscribed")
    publisher, _ = await client_on(a.port, "0", token(perms=["publish"], rooms=["probe:*"]),
                                   opened)
    n = 7
    for i in range(1, n + 1):
        await publisher.request({"type": "publish", "room": "probe:node", "data": {"i": i},
                                 "id": i}, "ack")
    for i in range(1, n + 1):
        assert (await member.recv_type("message"))["seq"] == i
    status, doc = await http_get(a.port, "/admin/rooms?q=probe:node")
    assert status == 200 and doc["scope"] == "cluster", doc
    assert set(doc["workers"]) == {node_id(a), far} and doc["missing"] == []
    [room] = doc["rooms"]
    assert room["members_by_worker"] == {far: 1} and room["last_seq"] == n
    assert room["messages_per_second"] == pytest.approx(n / RATE_WINDOW)
    assert (room["history"]["held"], room["history"]["last_seq"]) == (n, n)
    status, doc = await http_get(a.port, f"/admin/connections?connection_id={conn_id}")
    [entry] = doc["connections"]
    assert entry["source"] == far and entry["connection_id"] == conn_id
    assert [h["state"] for h in entry["state_history"]] == ["connecting", "authenticated"]


async def test_redis_a_node_that_does_not_answer_is_named(nodes: tuple[ServerProcess, ...],
                                                         opened: list[Any]) -> None:
    a, b = nodes
    [started] = b.events("worker_started")
    os.kill(started["pid"], signal.SIGSTOP)
    try:
        status, doc = await http_get(a.port, "/admin/connections")
    finally:
        os.kill(started["pid"], signal.SIGCONT)
    assert status == 200, doc
    assert doc["missing"] == [node_id(b)] and set(doc["workers"]) == {node_id(a)}
    assert doc["expected_workers"] == 2
