"""The server with PostgreSQL: features, records, notifications, ingress, schema check."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import msgspec
import orjson
import pytest

from conftest import Client, ServerFactory, make_config, token
from rtserver.domains.insurance.ingress_kinds import INSURANCE_KINDS, send_user_notification
from rtserver.ingress.payloads import CORE_KINDS, IngressDecoder
from rtserver.ingress.postgres_notify import send_ingress
from rtserver.server import RtServer
from rtserver.store.migrations import SchemaBehind
from tests.store.pgutil import TempDatabase, create_database, drop_database

Connect = Callable[..., Awaitable[Client]]
CHANNEL = "rtserver_ingress"
DECODER = IngressDecoder((*CORE_KINDS, *INSURANCE_KINDS))


@pytest.fixture(scope="module")
def db_dsn() -> Iterator[str]:
    with TempDatabase(migrated=True) as dsn:
        yield dsn


def db_config(dsn: str, **sections: dict[str, object]) -> object:
    database = {"dsn": dsn, "record_flush_interval": 0.05, "ingress_channel": CHANNEL}
    database.update(sections.pop("database", {}))  # type: ignore[arg-type]
    return make_config(database=database, **sections)


@pytest.fixture
async def db_server(make_server: ServerFactory, db_dsn: str) -> AsyncIterator[RtServer]:
    server = await make_server(db_config(db_dsn))
    await server.ingress.wait_listening(10.0)
    yield server


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def test_connection_records(db_server: RtServer, connect_client: Connect,
                                  db_dsn: str) -> None:
    user = str(uuid.uuid4())
    client = await connect_client(token(user=user), srv=db_server)
    await client.request({"type": "ping"}, "pong")
    conn_id = next(iter(db_server.node.hub.connections))
    await client.ws.close(4100, "bye now")
    pg = await asyncpg.connect(db_dsn)
    try:
        async def closed() -> bool:
            row = await pg.fetchrow("SELECT * FROM websocket_connections WHERE connection_id=$1",
                                    conn_id)
            return row is not None and row["disconnected_at"] is not None

        await wait_for(closed)
        row = await pg.fetchrow("SELECT * FROM websocket_connections WHERE connection_id=$1",
                                conn_id)
        assert str(row["user_id"]) == user and row["close_code"] == 4100
        assert "bye now" in row["close_reason"] and str(row["ip_address"]) == "127.0.0.1"
        assert row["connected_at"] <= row["disconnected_at"] and row["worker"] == 0
    finally:
        await pg.close()


async def delivered_at(dsn: str, notification_id: int) -> object:
    pg = await asyncpg.connect(dsn)
    try:
        return await pg.fetchval("SELECT delivered_at FROM notifications WHERE id=$1",
                                 notification_id)
    finally:
        await pg.close()


async def no_more_notifications(client: Client) -> None:
    """Pending notifications are sent before anything the client asks afterwards: a pong
    with nothing but heartbeats before it proves there are none (recv_type fails on any
    other frame)."""
    assert (await client.request({"type": "ping", "id": "after"}, "pong"))["id"] == "after"


async def test_offline_notifications_pending_until_received_then_ack(
        db_server: RtServer, connect_client: Connect, db_dsn: str) -> None:
    user = str(uuid.uuid4())
    ids = []
    for i in range(3):
        ids.append(await send_user_notification(db_dsn, CHANNEL, user=user, title=f"t{i}",
                                                body="b", data={"i": i}, connect_timeout=5))
    first = await connect_client(token(user=user), srv=db_server)
    got = [await first.recv_type("notification") for _ in range(3)]
    assert [g["id"] for g in got] == ids and [g["data"]["i"] for g in got] == [0, 1, 2]
    await no_more_notifications(first)
    await first.ws.close()
    # Not acknowledged: sent again on the next connect (at-least-once).
    second = await connect_client(token(user=user), srv=db_server)
    assert [(await second.recv_type("notification"))["id"] for _ in range(3)] == ids
    received = await second.request({"type": "notification_received",
                                     "notification_ids": [*ids[:2], 2**62], "id": 5},
                                    "notifications_received")
    assert received == {"type": "notifications_received", "notification_ids": ids[:2],
                        "unknown_ids": [2**62], "id": 5}
    assert await delivered_at(db_dsn, ids[0]) is not None
    assert await delivered_at(db_dsn, ids[2]) is None
    await second.ws.close()
    third = await connect_client(token(user=user), srv=db_server)
    assert (await third.recv_type("notification"))["id"] == ids[2]
    await no_more_notifications(third)
    acked = await third.request({"type": "notification_ack", "notification_id": ids[2],
                                 "id": 1}, "notification_acked")
    assert acked["notification_id"] == ids[2] and acked["read_at"]
    assert await delivered_at(db_dsn, ids[2]) is not None  # read implies received
    page = await third.request({"type": "notifications_list", "unread_only": True,
                                "limit": 10}, "notifications")
    assert [n["notification_id"] for n in page["items"]] == [ids[1], ids[0]]
    await third.ws.close()
    fourth = await connect_client(token(user=user), srv=db_server)
    await no_more_notifications(fourth)
    other = await connect_client(token(), srv=db_server)
    err = await other.request({"type": "notification_ack", "notification_id": ids[1]}, "error")
    assert err["code"] == "not_found"
    theirs = await other.request({"type": "notification_received",
                                  "notification_ids": [ids[0]]}, "notifications_received")
    assert theirs["notification_ids"] == [] and theirs["unknown_ids"] == [ids[0]]
    for bad in ([], list(range(1, 102))):
        err = await other.request({"type": "notification_received",
                                   "notification_ids": bad}, "error")
        assert err["code"] == "invalid_field" and err["action"].startswith("Required action")


async def test_next_pending_batch_follows_the_acknowledgement(make_server: ServerFactory,
                                                              connect_client: Connect,
                                                              db_dsn: str) -> None:
    server = await make_server(db_config(db_dsn, notifications={"pending_batch": 2,
                                                                "page_max": 100}))
    await server.ingress.wait_listening(10.0)
    from rtserver.metrics import REGISTRY

    handled = REGISTRY.counter("rtserver_ingress_delivered_total", "", ("type",))
    before = handled.get("UserNotify")
    user = str(uuid.uuid4())
    ids = [await send_user_notification(db_dsn, CHANNEL, user=user, title=f"t{i}", body="b",
                                        data={}, connect_timeout=5) for i in range(3)]

    async def announced() -> bool:  # the live sends are over: nothing arrives live later
        return handled.get("UserNotify") - before == 3

    await wait_for(announced)
    client = await connect_client(token(user=user), srv=server)
    assert [(await client.recv_type("notification"))["id"] for _ in range(2)] == ids[:2]
    await no_more_notifications(client)
    # Acknowledging only the first of the batch does not ask for more.
    await client.request({"type": "notification_received", "notification_ids": ids[:1]},
                         "notifications_received")
    await no_more_notifications(client)
    await client.request({"type": "notification_received", "notification_ids": ids[1:2]},
                         "notifications_received")
    assert (await client.recv_type("notification"))["id"] == ids[2]
    await no_more_notifications(client)


async def test_live_notification_pending_until_received(db_server: RtServer,
                                                        connect_client: Connect,
                                                        db_dsn: str) -> None:
    user = str(uuid.uuid4())
    a = await connect_client(token(user=user), srv=db_server)
    b = await connect_client(token(user=user), srv=db_server)
    nid = await send_user_notification(db_dsn, CHANNEL, user=user, title="Quote ready",
                                       body="Your quote is ready", data={"q": 1},
                                       connect_timeout=5)
    for c in (a, b):
        n = await c.recv_type("notification")
        assert n["id"] == nid and n["title"] == "Quote ready"
    # Queued and even read by both clients: not delivered until one acknowledges it.
    await no_more_notifications(a)
    assert await delivered_at(db_dsn, nid) is None
    reply = await b.request({"type": "notification_received", "notification_ids": [nid]},
                            "notifications_received")
    assert reply["notification_ids"] == [nid]
    assert await delivered_at(db_dsn, nid) is not None


async def test_slow_consumer_close_before_ack_resends_on_reconnect(
        make_server: ServerFactory, connect_client: Connect, db_dsn: str) -> None:
    """The notification reached the client's socket, then the client went slow and was
    closed with 1013 before acknowledging it: it is still pending and arrives again."""
    from tests.server.slow_client import (
        SLOW_LIMITS,
        connect_slow,
        drain_close_code,
        flood_until_closed,
    )

    server = await make_server(db_config(db_dsn, limits=SLOW_LIMITS))
    await server.ingress.wait_listening(10.0)
    user = str(uuid.uuid4())
    room = f"bench:slow-{user}"
    slow, slow_id = await connect_slow(server, token(user=user, rooms=["bench:*"]))
    await slow.request({"type": "subscribe", "room": room}, "subscribed")
    nid = await send_user_notification(db_dsn, CHANNEL, user=user, title="Policy issued",
                                       body="b", data={}, connect_timeout=5)
    assert (await slow.recv_type("notification"))["id"] == nid
    publisher = await connect_client(token(perms=["publish"], rooms=["bench:*"]), srv=server)
    assert await flood_until_closed(server, slow_id, publisher, room) > 1
    assert await drain_close_code(slow) == 1013
    assert await delivered_at(db_dsn, nid) is None
    again = await connect_client(token(user=user), srv=server)
    assert (await again.recv_type("notification"))["id"] == nid
    await again.request({"type": "notification_received", "notification_ids": [nid]},
                        "notifications_received")
    await again.ws.close()
    last = await connect_client(token(user=user), srv=server)
    await no_more_notifications(last)


async def test_ingress_room_publish_and_invalid(db_server: RtServer, connect_client: Connect,
                                                db_dsn: str) -> None:
    from rtserver.metrics import REGISTRY

    member = await connect_client(token(rooms=["bench:*"]), srv=db_server)
    await member.request({"type": "subscribe", "room": "bench:ingress"}, "subscribed")
    invalid = REGISTRY.counter("rtserver_ingress_invalid_total", "", ("kind",))
    before = sum(invalid.values.values())
    pg = await asyncpg.connect(db_dsn)
    try:
        await pg.execute("SELECT pg_notify($1, $2)", CHANNEL, '{"type":"room_publish"}')
        await pg.execute("SELECT pg_notify($1, $2)", CHANNEL, "not json")
    finally:
        await pg.close()
    await send_ingress(db_dsn, CHANNEL, orjson.dumps(
        {"type": "room_publish", "room": "bench:ingress", "data": {"rate": 1.5}}), DECODER,
        connect_timeout=5)
    msg = await member.recv_type("message")
    assert msg["data"] == {"rate": 1.5} and msg["from"] is None and msg["seq"] == 1
    assert sum(invalid.values.values()) - before == 2


async def test_broadcast_arrives_while_database_blocked(db_server: RtServer,
                                                        connect_client: Connect,
                                                        db_dsn: str) -> None:
    pg = await asyncpg.connect(db_dsn)
    tx = pg.transaction()
    await tx.start()
    await pg.execute("LOCK TABLE websocket_connections IN ACCESS EXCLUSIVE MODE")
    try:
        sub = await connect_client(token(rooms=["bench:*"]), srv=db_server)
        pub = await connect_client(token(perms=["publish"], rooms=["bench:*"]), srv=db_server)
        await sub.request({"type": "subscribe", "room": "bench:blocked"}, "subscribed")
        await pub.request({"type": "publish", "room": "bench:blocked", "data": 7}, "ack")
        assert (await sub.recv_type("message", timeout=2.0))["data"] == 7
        await db_server.node.broadcast(b'{"type":"announcement"}')
        assert (await sub.recv_type("announcement", timeout=2.0))["type"] == "announcement"
    finally:
        await tx.rollback()
        await pg.close()


async def test_features_need_database(server: RtServer, connect_client: Connect) -> None:
    client = await connect_client(token())
    err = await client.request({"type": "notifications_list", "unread_only": False,
                                "limit": 5, "id": 3}, "error")
    assert err["code"] == "feature_unavailable" and "--database" in err["action"]


async def test_refuses_old_schema(make_server: ServerFactory) -> None:
    dsn = await create_database()
    try:
        with pytest.raises(SchemaBehind, match="rtserver migrate"):
            await make_server(db_config(dsn))
    finally:
        await drop_database(dsn)


def test_config_roundtrip_has_database_keys(db_dsn: str) -> None:
    config = db_config(db_dsn)
    assert msgspec.to_builtins(config)["database"]["dsn"] == db_dsn  # type: ignore[arg-type]


def _cli(*args: str) -> tuple[int, str, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    out = subprocess.run([sys.executable, "-m", "rtserver", *args], env=env,
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


async def test_migrate_command_idempotent() -> None:
    dsn = await create_database()
    try:
        rc, out, err = await asyncio.to_thread(_cli, "migrate", "--database", dsn)
        assert rc == 0 and "applied migrations [1" in out, err
        rc, out, _ = await asyncio.to_thread(_cli, "migrate", "--database", dsn)
        assert rc == 0 and "nothing to do" in out
    finally:
        await drop_database(dsn)
    rc, _, err = await asyncio.to_thread(_cli, "migrate")
    assert rc == 2 and "--database" in err


async def test_publish_and_notify_commands(db_server: RtServer, connect_client: Connect,
                                           db_dsn: str) -> None:
    user = str(uuid.uuid4())
    member = await connect_client(token(user=user, rooms=["bench:*"]), srv=db_server)
    await member.request({"type": "subscribe", "room": "bench:cli"}, "subscribed")
    rc, _, err = await asyncio.to_thread(_cli, "publish", "--database", db_dsn, "--room",
                                         "bench:cli", "--data", '{"from":"cli"}')
    assert rc == 0, err
    assert (await member.recv_type("message"))["data"] == {"from": "cli"}
    rc, _, err = await asyncio.to_thread(_cli, "notify", "--database", db_dsn, "--user", user,
                                           "--title", "Hello", "--body", "World")
    assert rc == 0, err
    n = await member.recv_type("notification")
    assert n["title"] == "Hello" and n["body"] == "World"
    rc, _, err = await asyncio.to_thread(_cli, "publish", "--database", db_dsn, "--room",
                                         "bench:cli", "--data", "{nope")
    assert rc == 2 and "not JSON" in err


async def test_redis_ingress(make_server: ServerFactory, connect_client: Connect) -> None:
    import redis.asyncio as aioredis

    from rtserver.metrics import REGISTRY

    key = f"rtserver:test-ingress:{uuid.uuid4().hex}"
    server = await make_server(make_config(bus={"redis_url": "redis://127.0.0.1:6379/0",
                                                "ingress_key": key,
                                                "ingress_block_timeout": 0.2}))
    member = await connect_client(token(rooms=["bench:*"]), srv=server)
    await member.request({"type": "subscribe", "room": "bench:redis-in"}, "subscribed")
    invalid = REGISTRY.counter("rtserver_redis_ingress_invalid_total", "")
    before = invalid.get()
    r = aioredis.from_url("redis://127.0.0.1:6379/0")
    try:
        await r.rpush(key, b'{"type":"room_publish","room":"bench:redis-in"}')
        await r.rpush(key, orjson.dumps({"type": "room_publish", "room": "bench:redis-in",
                                         "data": [1, 2]}))
        assert (await member.recv_type("message"))["data"] == [1, 2]
        assert invalid.get() - before == 1
        # One consumer over all workers: the room gets the payloads in the pushed order.
        await r.rpush(key, *[orjson.dumps({"type": "room_publish", "room": "bench:redis-in",
                                           "data": n}) for n in range(20)])
        assert [(await member.recv_type("message"))["data"] for _ in range(20)] == list(
            range(20))
        dead = await r.lrange(f"{key}:dead", 0, -1)
        assert dead == [b'{"type":"room_publish","room":"bench:redis-in"}']
    finally:
        await r.delete(key, f"{key}:dead", f"{key}:processing", f"{key}:leader")
        await r.aclose()


async def test_ingress_reaches_room_and_user_across_two_workers(make_server: ServerFactory,
                                                                db_dsn: str) -> None:
    """Two workers on one embedded bus hub, each with its own ingress listener (one leads):
    a NOTIFY room publication and a user notification reach both workers, once each."""
    import shutil
    import tempfile

    from websockets.asyncio.client import connect

    from rtserver.backoff import BackoffPolicy
    from rtserver.bus.embedded_client import EmbeddedBus
    from rtserver.bus.embedded_server import EmbeddedBusServer
    from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, EmbeddedBusSettings
    from rtserver.bus.room_streams import HistorySettings

    HISTORY = HistorySettings(history_size=100, history_ttl=300.0,
                              history_max_bytes=1 << 20, idempotency_window=60.0)
    runtime = tempfile.mkdtemp(prefix="rti")
    path = f"{runtime}/bus.sock"
    hub = EmbeddedBusServer(EmbeddedBusServerSettings(socket_path=path, expected_workers=2,
                             max_worker_buffer=64 * 1024 * 1024, collect_timeout=2.0,
                             history=HISTORY))
    await hub.start()
    clients = []
    try:
        servers = []
        for worker in (0, 1):
            bus = EmbeddedBus(EmbeddedBusSettings(
                socket_path=path, worker_id=worker, request_timeout=5.0, connect_timeout=2.0,
                reconnect=BackoffPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2)))
            servers.append(await make_server(db_config(db_dsn), bus=bus, worker_id=worker))
        # Exactly one worker's listener holds the leader lock and listens.
        waits = {asyncio.ensure_future(s.ingress.wait_listening(10)): s for s in servers}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        leaders = [waits[t] for t in done if t.exception() is None]
        assert len(leaders) == 1
        user = str(uuid.uuid4())
        members = []
        for srv in servers:
            ws = await connect(f"ws://127.0.0.1:{srv.port}/ws?token="
                               f"{token(user=user, rooms=['bench:*'])}")
            clients.append(ws)
            c = Client(ws)
            assert (await c.recv())["worker"] == srv.worker_id
            await c.recv()
            await c.request({"type": "subscribe", "room": "bench:two"}, "subscribed")
            members.append(c)
        await send_ingress(db_dsn, CHANNEL, orjson.dumps(
            {"type": "room_publish", "room": "bench:two", "data": "both"}), DECODER,
            connect_timeout=5)
        nid = await send_user_notification(db_dsn, CHANNEL, user=user, title="t", body="b",
                                           data={}, connect_timeout=5)
        for c in members:
            msg = await c.recv_type("message")
            assert msg["data"] == "both" and msg["seq"] == 1
            assert (await c.recv_type("notification"))["id"] == nid
        for c in members:  # exactly once: nothing else follows
            with pytest.raises(TimeoutError):
                await c.recv(timeout=0.3)
    finally:
        for ws in clients:
            await ws.close()
        for srv in list(servers):
            await srv.stop(1001, "test over")
        await hub.close()
        shutil.rmtree(runtime, ignore_errors=True)
