"""An alert raised by stopping Redis (the bus) reaches a monitoring admin and is stored."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from conftest import token
from rtserver.bus.embedded import ReconnectPolicy
from rtserver.bus.redis_bus import RedisBus, RedisBusSettings, default_node_id
from tests.handlers.helpers import recv_until
from tests.store.pgutil import free_port

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
        node_id=default_node_id(0), history_size=10, presence_ttl=30.0,
        presence_refresh_interval=10.0, request_timeout=1.0, connect_timeout=0.5,
        max_connections=4, publish_batch_max=16,
        reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2)))
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
    recovered = await recv_until(client, "admin_alert", timeout=15)
    assert recovered["alert_type"] == "component_recovered"
    assert recovered["data"]["component"] == alert["data"]["component"]
