"""Alerts in outages: Redis (the bus) stopped, PostgreSQL stopped (stored when it is back)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from conftest import token
from rtserver.backoff import BackoffPolicy
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id
from tests.domains.insurance.helpers import insurance, recv_until, wait_until
from tests.store.pgutil import PgInstance, create_database, free_port, migrate

pytestmark = pytest.mark.timeout(60)


class RedisProcess:
    """A private redis-server on a free loopback port (stoppable without disturbing others)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_proc() -> Iterator[RedisProcess]:
    r = RedisProcess()
    r.start()
    try:
        yield r
    finally:
        r.stop()


async def test_redis_down_alert_reaches_admin_and_is_stored(domain_server: Any, ws: Any,
                                                            redis_proc: RedisProcess,
                                                            db_dsn: str) -> None:
    bus = RedisBus(RedisBusSettings(
        url=f"redis://127.0.0.1:{redis_proc.port}/0", key_prefix=f"rth-{uuid.uuid4().hex[:8]}",
        node_id=default_node_id(0), history_size=10,
        history_ttl=300.0, history_max_bytes=1 << 20, idempotency_window=60.0, presence_ttl=30.0,
        presence_refresh_interval=10.0, request_timeout=1.0, connect_timeout=0.5,
        max_connections=4, publish_batch_max=16,
        reconnect=BackoffPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2)))
    server = await domain_server(bus=bus)
    client = await ws(server, token(perms=["admin:monitor"]))
    await client.send({"type": "start_monitoring", "update_interval": 30.0, "id": 1})
    await recv_until(client, "stream_started")
    metrics = await recv_until(client, "system_metrics")
    assert metrics["bus"]["kind"] == "redis" and metrics["bus"]["ok"] is True

    redis_proc.stop()
    alert = await recv_until(client, "admin_alert", timeout=15)
    assert alert["alert_type"] == "component_degraded" and alert["severity"] == "critical"
    assert alert["data"]["component"].startswith("bus") and alert["stored"] is True
    pg = await asyncpg.connect(db_dsn)
    try:
        row = await pg.fetchrow("SELECT * FROM system_alerts WHERE id = $1", alert["alert_id"])
    finally:
        await pg.close()
    assert row is not None and row["alert_type"] == "component_degraded"
    assert row["severity"] == "critical" and not row["resolved"]

    redis_proc.start()
    # The restarted Redis lost its data: the room's stream restarted, and the member is told
    # so explicitly (a gap frame), before or after the recovery alert.
    gaps: list[dict[str, Any]] = []
    while True:
        frame = await client.recv(15)
        if frame["type"] == "gap" or (frame["type"] == "admin_alert"
                                      and frame["alert_type"] == "stream_gap"):
            gaps.append(frame)  # the gap frame, and the operators' alert about it
        elif frame["type"] not in ("heartbeat", "room_event", "subscribed"):
            assert frame["type"] == "admin_alert", frame
            break
    recovered = frame
    assert recovered["alert_type"] == "component_recovered"
    assert recovered["data"]["component"] == alert["data"]["component"]
    if not any(g["type"] == "gap" for g in gaps):
        gaps.append(await recv_until(client, "gap", timeout=15))
    gap = next(g for g in gaps if g["type"] == "gap")
    assert gap["room"] == "admin:alerts" and gap["reason"] == "epoch_changed"


@pytest.fixture
def private_pg() -> Iterator[PgInstance]:
    """A private PostgreSQL server the test may stop (torn down after the servers)."""
    instance = PgInstance()
    instance.start()
    try:
        yield instance
    finally:
        instance.destroy()


async def test_alert_raised_while_database_down_is_stored_later(private_pg: PgInstance,
                                                                domain_server: Any,
                                                                ws: Any) -> None:
    dsn = await create_database(private_pg.admin_dsn)
    await migrate(dsn)
    server = await domain_server(dsn=dsn)
    client = await ws(server, token(perms=["admin:monitor"]))
    await client.send({"type": "start_monitoring", "update_interval": 30.0, "id": 1})
    await recv_until(client, "stream_started")
    assert (await recv_until(client, "system_metrics"))["database"]["ok"] is True
    private_pg.stop()
    sent = await insurance(server).alerts.raise_alert("test_outage", "high", "raised during outage",
                             {"n": 1})
    assert sent.alert_id is None and sent.stored is False
    first = await recv_until(client, "admin_alert")
    assert first["alert_id"] is None and first["stored"] is False
    assert insurance(server).alerts.pending
    private_pg.start()
    later = await recv_until(client, "admin_alert", timeout=20)
    assert later["stored"] is True and isinstance(later["alert_id"], int)
    assert later["raised_at"] == first["raised_at"] and later["data"] == {"n": 1}
    pg = await asyncpg.connect(dsn)
    try:
        row = await pg.fetchrow("SELECT * FROM system_alerts WHERE id = $1", later["alert_id"])
    finally:
        await pg.close()
    assert row["alert_type"] == "test_outage" and row["message"] == "raised during outage"
    assert not insurance(server).alerts.pending


async def test_slow_consumers_above_the_rate_raise_an_alert(domain_server: Any,
                                                            ws: Any) -> None:
    from websockets.asyncio.client import connect

    from rtserver.node import SLOW_CONSUMERS

    server = await domain_server(config={"limits": {"outbound_buffer_limit": 65536}},
                                 slow_consumer_alert_threshold=2)
    admin = await ws(server, token(perms=["admin:monitor"]))
    await admin.send({"type": "start_monitoring", "update_interval": 30.0})
    await recv_until(admin, "system_metrics", skip=("subscribed", "stream_started"))
    before = SLOW_CONSUMERS.get()
    # Two real clients that stop reading (max_queue=1: websockets pauses the socket).
    tok = token(rooms=["bench:*"])
    sleepers = []
    for _ in range(2):
        c = await connect(f"ws://127.0.0.1:{server.port}/ws?token={tok}", max_queue=1,
                          compression=None)
        sleepers.append(c)
        await c.send('{"type":"subscribe","room":"bench:slow"}')
    await wait_until(lambda: len(server.node.hub.rooms.get("bench:slow", ())) == 2, "joined")
    body = b'{"type":"message","room":"bench:slow","from":null,"data":"' + b"x" * 8192 + b'"}'
    for _ in range(4000):  # at most ~32 MB per sleeper
        if SLOW_CONSUMERS.get() - before >= 2:
            break
        await server.node.send_to_room("bench:slow", body)
        await asyncio.sleep(0)  # let the fan-out core flush (and measure) this tick
    assert SLOW_CONSUMERS.get() - before >= 2
    alert = await recv_until(admin, "admin_alert", timeout=10)
    assert alert["alert_type"] == "slow_consumers" and alert["severity"] == "medium"
    assert alert["data"]["closed"] >= 2 and alert["data"]["threshold"] == 2
    assert alert["stored"] is True
    for c in sleepers:
        c.transport.abort()
