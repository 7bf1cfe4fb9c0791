"""End to end: the real server as supervised SO_REUSEPORT workers (tests/bus/e2e_app.py).

Embedded bus with two workers, and two single-worker instances sharing Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rtserver.auth import mint_token

from .conftest import App, PrivateRedis

pytestmark = pytest.mark.timeout(90)

APP = Path(__file__).with_name("e2e_app.py")
ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-0123456789abcdef-0123456789"
SHARED_URL = "redis://127.0.0.1:6379/0"
ROOM = "quote:e2e"


def token(user: str) -> str:
    return mint_token(SECRET, user, ["quote:read", "quote:write"], ["quote:*"], 3600)


class Ws:
    """A client connection with its welcome frame and JSON helpers."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any], user: str) -> None:
        self.ws = ws
        self.worker = int(welcome["worker"])
        self.user = user
        self.messages: list[dict[str, Any]] = []

    async def send(self, obj: Any) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def recv_type(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        """Next frame of ``type_``; room publications met on the way are kept."""
        async with asyncio.timeout(timeout):
            while True:
                msg = orjson.loads(await self.ws.recv())
                if msg["type"] == type_:
                    return dict(msg)
                if msg["type"] == "message":
                    self.messages.append(msg)
                elif msg["type"] not in ("heartbeat", "room_event", "ack"):
                    raise AssertionError(f"expected {type_}, got {msg}")

    async def collect(self, count: int, timeout: float = 15.0) -> list[int]:
        """Room publications until ``count`` were received; their seqs in arrival order."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                msg = orjson.loads(await self.ws.recv())
                if msg["type"] == "message":
                    self.messages.append(msg)
                elif msg["type"] == "error":
                    raise AssertionError(f"error frame: {msg}")
        return [int(m["seq"]) for m in self.messages]


async def open_ws(port: int, user: str | None = None) -> Ws:
    user = user or str(uuid.uuid4())
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token(user)}", compression=None)
    welcome = orjson.loads(await ws.recv())
    assert welcome["type"] == "connection", welcome
    auth = orjson.loads(await ws.recv())
    assert auth["type"] == "authenticated", auth
    return Ws(ws, welcome, user)


async def clients_on_workers(port: int, per_worker: dict[int, int],
                             user: str | None = None) -> dict[int, list[Ws]]:
    """Connect until each worker holds its count (SO_REUSEPORT decides where)."""
    got: dict[int, list[Ws]] = {w: [] for w in per_worker}
    extra: list[Ws] = []
    for _ in range(200):
        if all(len(got[w]) >= n for w, n in per_worker.items()):
            break
        c = await open_ws(port, user)
        if c.worker in got and len(got[c.worker]) < per_worker[c.worker]:
            got[c.worker].append(c)
        else:
            extra.append(c)
    for c in extra:
        await c.ws.close()
    assert all(len(got[w]) >= n for w, n in per_worker.items()), {
        w: len(v) for w, v in got.items()}
    return got


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    writer.close()
    return status, body


@pytest.fixture
async def start_e2e() -> AsyncIterator[Any]:
    apps: list[App] = []

    async def start(workers: int, *extra: str, poke_user: str) -> App:
        runtime = os.path.join("/tmp", f"rte2e-{os.getpid()}-{len(apps)}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(APP), runtime, str(workers), *extra,
            stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT), "E2E_POKE_USER": poke_user})
        app = App(proc)
        apps.append(app)
        await app.wait_events("listening", workers, timeout=40)
        return app

    yield start
    for app in apps:
        await app.finish()


async def publish_burst(client: Ws, count: int, tag: str) -> None:
    for i in range(count):
        await client.send({"type": "publish", "room": ROOM, "data": {"from": tag, "i": i},
                           "id": f"{tag}-{i}"})


async def test_two_workers_embedded_bus(start_e2e: Any) -> None:
    poke_user = str(uuid.uuid4())
    app = await start_e2e(2, poke_user=poke_user)
    port = app.port
    clients = await clients_on_workers(port, {0: 2, 1: 2})
    subs = clients[0] + clients[1]
    for i, c in enumerate(subs):
        await c.send({"type": "subscribe", "room": ROOM, "id": i})
        reply = await c.recv_type("subscribed")
        assert reply["seq"] == 0
    # Publishers on both workers at once: every subscriber sees 1..60 exactly once, in order.
    await asyncio.gather(publish_burst(clients[0][0], 30, "w0"),
                         publish_burst(clients[1][0], 30, "w1"))
    for c in subs:
        assert await c.collect(60) == list(range(1, 61)), c.worker
        assert {m["data"]["from"] for m in c.messages} == {"w0", "w1"}
    # Presence is the union over the workers.
    for c in (clients[0][1], clients[1][1]):
        await c.send({"type": "presence", "room": ROOM, "id": "p"})
        presence = await c.recv_type("presence")
        assert presence["count"] == 4
    # send_to_user crosses workers: the poke lands on one worker, both connections get it.
    pokes = await clients_on_workers(port, {0: 1, 1: 1}, user=poke_user)
    status, _ = await http_get(port, "/test/poke")
    assert status == 200
    for c in (pokes[0][0], pokes[1][0]):
        assert (await c.recv_type("poke"))["type"] == "poke"
    # /healthz and /metrics answer for the whole server.
    status, body = await http_get(port, "/healthz")
    health = orjson.loads(body)
    assert status == 200 and health["status"] == "ok", health
    assert set(health["workers"]) == {"0", "1"}
    status, body = await http_get(port, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'worker="0"' in text and 'worker="1"' in text and 'worker="supervisor"' in text

    # SIGKILL worker 1: its clients drop, worker 0 keeps serving, worker 1 is respawned.
    pid1 = next(e["pid"] for e in app.events("worker_started") if e["worker_id"] == 1)
    os.kill(pid1, signal.SIGKILL)
    for c in clients[1] + pokes[1]:
        with pytest.raises(ConnectionClosed):
            await c.recv_type("never", timeout=10)
    await clients[0][0].send({"type": "publish", "room": ROOM, "data": 61, "id": "after"})
    for c in clients[0]:
        assert (await c.collect(61))[-1] == 61
    await app.wait_events("listening", 3, timeout=40)
    again = await clients_on_workers(port, {1: 1})
    await again[1][0].send({"type": "subscribe", "room": ROOM, "id": "again"})
    assert (await again[1][0].recv_type("subscribed"))["seq"] == 61

    # SIGTERM drains every worker: clients see 1012, the supervisor exits 0.
    app.proc.send_signal(signal.SIGTERM)
    for c in [*clients[0], pokes[0][0], again[1][0]]:
        with pytest.raises(ConnectionClosed) as closed:
            await c.recv_type("never", timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert await asyncio.wait_for(app.proc.wait(), 30) == 0


async def test_two_instances_share_redis(start_e2e: Any) -> None:
    prefix = f"rte2e-{uuid.uuid4().hex[:10]}"
    poke_user = str(uuid.uuid4())
    try:
        app1 = await start_e2e(1, SHARED_URL, prefix, poke_user=poke_user)
        app2 = await start_e2e(1, SHARED_URL, prefix, poke_user=poke_user)
        assert app1.port != app2.port
        subs = [await open_ws(app1.port), await open_ws(app1.port),
                await open_ws(app2.port), await open_ws(app2.port)]
        for i, c in enumerate(subs):
            await c.send({"type": "subscribe", "room": ROOM, "id": i})
            assert (await c.recv_type("subscribed"))["seq"] == 0
        await asyncio.gather(publish_burst(subs[0], 30, "n1"), publish_burst(subs[2], 30, "n2"))
        for c in subs:
            assert await c.collect(60) == list(range(1, 61))
        await subs[1].send({"type": "presence", "room": ROOM, "id": "p"})
        assert (await subs[1].recv_type("presence"))["count"] == 4
        poked = await open_ws(app2.port, poke_user)
        status, _ = await http_get(app1.port, "/test/poke")
        assert status == 200
        assert (await poked.recv_type("poke"))["type"] == "poke"
        status, body = await http_get(app1.port, "/healthz")
        health = orjson.loads(body)
        assert status == 200 and health["workers"]["0"]["bus"]["kind"] == "redis"
        for app in (app1, app2):
            app.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(app.proc.wait(), 30) == 0
    finally:
        client = aioredis.from_url(SHARED_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_redis_outage_degrades_refuses_publishes_then_recovers(start_e2e: Any) -> None:
    private = PrivateRedis()
    private.start()
    try:
        app = await start_e2e(1, private.url, "rtout", poke_user=str(uuid.uuid4()))
        sub = await open_ws(app.port)
        await sub.send({"type": "subscribe", "room": ROOM, "id": 1})
        await sub.recv_type("subscribed")
        await publish_burst(sub, 3, "before")
        assert await sub.collect(3) == [1, 2, 3]

        private.kill()
        health: dict[str, Any] = {}
        for _ in range(100):
            status, body = await http_get(app.port, "/healthz")
            health = orjson.loads(body)
            if status == 503:
                break
            await asyncio.sleep(0.05)
        assert health["status"] == "degraded"
        assert "redis unavailable" in orjson.dumps(health["workers"]["0"]["reasons"]).decode()
        # The connection stays open; a publish is answered with an error, not lost silently.
        await sub.send({"type": "publish", "room": ROOM, "data": "during", "id": "d"})
        error = await sub.recv_type("error")
        assert error["code"] == "bus_unavailable" and error["id"] == "d"
        assert "Required action" in error["action"]

        private.start()
        for _ in range(200):
            status, body = await http_get(app.port, "/healthz")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200, body
        await app.wait_events("bus_recovered", 1)
        # Resubscribed, and the room's seq continues (re-seeded after the data loss).
        await sub.send({"type": "publish", "room": ROOM, "data": "after", "id": "a"})
        assert await sub.collect(4) == [1, 2, 3, 4]
        assert app.events("redis_data_lost")
        app.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(app.proc.wait(), 30) == 0
    finally:
        private.kill()
