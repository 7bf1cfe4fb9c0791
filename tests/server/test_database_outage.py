"""A server whose PostgreSQL stops mid-test: degraded health, delivery goes on, recovery."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import orjson
import pytest

from conftest import Client, ServerFactory, make_config, token
from tests.store.pgutil import PgInstance, create_database, migrate

Connect = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PgInstance]:
    instance = PgInstance()
    instance.start()
    try:
        yield instance
    finally:
        instance.destroy()


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def test_database_outage_degrades_and_recovers(private_pg: PgInstance,
                                                     make_server: ServerFactory,
                                                     connect_client: Connect) -> None:
    dsn = await create_database(private_pg.admin_dsn)
    await migrate(dsn)
    server = await make_server(make_config(database={
        "dsn": dsn, "record_flush_interval": 0.05, "retry_backoff_base": 0.05,
        "retry_backoff_max": 0.3, "connect_timeout": 2.0, "pool_acquire_timeout": 2.0}))
    port = server.port or 0
    states: list[tuple[str, bool]] = []
    server.node.router.state_listeners.append(lambda comp, ok, reason: states.append((comp, ok)))
    sub = await connect_client(token(rooms=["bench:*"]), srv=server)
    pub = await connect_client(token(perms=["publish"], rooms=["bench:*"]), srv=server)
    await sub.request({"type": "subscribe", "room": "bench:outage"}, "subscribed")
    # The connect-time read of pending notifications runs before the server reads a connection's
    # first frame: a ping answered (and no error before it) proves both claims finished
    # while the database was still up, so none of them can meet the outage below.
    for client in (sub, pub):
        await client.request({"type": "ping"}, "pong")
    assert (await asyncio.to_thread(healthz, port))[0] == 200

    await asyncio.to_thread(private_pg.stop)
    try:
        # connections made and closed while the database is down are queued
        during = await connect_client(token(), srv=server)
        # the connect-time read of pending notifications cannot run: said, not fatal
        err = await during.recv_type("error")
        assert err["code"] == "store_unavailable"
        during_id = next(c.id for c in server.node.hub.connections.values()
                         if c.ws.remote_address == during.ws.local_address)
        await during.ws.close(4200, "closed during outage")
        async with asyncio.timeout(20):
            while True:
                status, doc = await asyncio.to_thread(healthz, port)
                if status == 503:
                    break
                await asyncio.sleep(0.1)
        assert doc["status"] == "degraded" and "database" in doc["reasons"]  # type: ignore[operator]
        assert ("database", False) in states
        # real-time delivery does not wait for the database
        await pub.request({"type": "publish", "room": "bench:outage", "data": "still"}, "ack")
        assert (await sub.recv_type("message", timeout=3))["data"] == "still"
    finally:
        if not private_pg.running:
            await asyncio.to_thread(private_pg.start)

    async with asyncio.timeout(30):
        while (await asyncio.to_thread(healthz, port))[0] != 200:
            await asyncio.sleep(0.1)
    assert ("database", True) in states
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(15):
            while True:
                row = await conn.fetchrow(
                    "SELECT close_code, close_reason FROM websocket_connections "
                    "WHERE connection_id = $1", during_id)
                if row is not None and row["close_code"] is not None:
                    break
                await asyncio.sleep(0.1)
        assert row["close_code"] == 4200 and "closed during outage" in row["close_reason"]
    finally:
        await conn.close()
