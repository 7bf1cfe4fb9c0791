"""Every admin HTTP route: 401 without a token, 403 without admin:monitor, 200 with it;
refused before the route runs (no database work); /admin/health's database part cached;
the console's files with their content types, caching headers and CSP."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

from conftest import token
from rtserver.admin_http import CONSOLE_CSP
from rtserver.metrics import REGISTRY
from tests.admin.conftest import get, new_prefix, redis_bus
from tests.domains.insurance.helpers import insurance, recv_until

ROUTES = ["/admin/session", "/admin/cluster", "/admin/connections", "/admin/rooms",
          "/admin/audit", "/admin/health", "/admin/alerts", "/admin/presence?room=admin:alerts",
          "/admin/connection_history?user=4d5e6f70-8192-4a3b-9c4d-5e6f708192a3"]


def answered(route: str) -> float:
    return REGISTRY.counter("rtserver_admin_http_requests_total", "", ("route",)).get(
        route.split("?")[0])


@pytest.mark.parametrize("route", ROUTES)
async def test_admin_route_needs_admin_monitor(domain_server: Any, route: str) -> None:
    server = await domain_server()
    port = server.port
    computed = insurance(server)._health_cache.computed
    before = answered(route)
    status, headers, body = await get(port, route)
    doc = orjson.loads(body)
    assert status == 401 and doc["error"] == "auth_required"
    assert doc["action"].startswith("Required action:")
    status, _, body = await get(port, route, "not-a-jwt")
    assert status == 401 and orjson.loads(body)["action"].startswith("Required action:")
    status, _, body = await get(port, route, token(perms=["quote:read", "admin:alerts"]))
    assert status == 403 and orjson.loads(body)["error"] == "forbidden"
    # Refused before the route ran: nothing counted as answered, no health query made.
    assert answered(route) == before
    assert insurance(server)._health_cache.computed == computed
    status, headers, body = await get(port, route, token(perms=["admin:monitor"]))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert answered(route) == before + 1
    assert isinstance(orjson.loads(body), dict)


async def test_unknown_admin_route_is_404_with_the_list(domain_server: Any) -> None:
    server = await domain_server()
    status, _, body = await get(server.port, "/admin/nothing", token(perms=["admin:monitor"]))
    doc = orjson.loads(body)
    assert status == 404 and "/admin/cluster" in doc["action"]


async def test_health_database_part_is_cached(domain_server: Any) -> None:
    server = await domain_server(config={"admin": {"health_cache_seconds": 30.0}})
    cache = insurance(server)._health_cache
    tok = token(perms=["admin:monitor"])
    _, _, body = await get(server.port, "/admin/health", tok)
    first = orjson.loads(body)
    computed = cache.computed
    _, _, body = await get(server.port, "/admin/health", tok)
    second = orjson.loads(body)
    assert cache.computed == computed, "the second request queried the database again"
    assert second["database"]["ping_ms"] == first["database"]["ping_ms"]
    assert second["database"]["cached_for"] > 0
    # The node's own state is live, not cached.
    server.node.set_degraded("bus:local", True, "injected")
    try:
        status, _, body = await get(server.port, "/admin/health", tok)
        assert status == 503 and "bus:local" in orjson.loads(body)["reasons"]
    finally:
        server.node.set_degraded("bus:local", False, None)


async def test_health_cache_expires(domain_server: Any) -> None:
    server = await domain_server(config={"admin": {"health_cache_seconds": 0.2}})
    cache = insurance(server)._health_cache
    tok = token(perms=["admin:monitor"])
    await get(server.port, "/admin/health", tok)
    computed = cache.computed
    await asyncio.sleep(0.25)  # past the cache time: the clock itself is under test
    await get(server.port, "/admin/health", tok)
    assert cache.computed == computed + 1


async def test_session_tells_the_console_what_it_may_do(domain_server: Any) -> None:
    server = await domain_server()
    _, _, body = await get(server.port, "/admin/session", token(perms=["admin:monitor"]))
    ro = orjson.loads(body)
    assert ro["can_operate"] is False and ro["refresh_seconds"] > 0 and ro["expires_at"] > 0
    _, _, body = await get(server.port, "/admin/session",
                           token(perms=["admin:monitor", "admin:operate"]))
    assert orjson.loads(body)["can_operate"] is True


async def test_cluster_document(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    await ws(server, token(perms=["admin:monitor"]))
    _, _, body = await get(server.port, "/admin/cluster", token(perms=["admin:monitor"]))
    doc = orjson.loads(body)
    worker = doc["workers"]["0"]
    assert worker["connections"]["authenticated"] == 1
    assert worker["health"]["status"] == "ok" and worker["uptime"] > 0
    assert worker["rss_bytes"] > 1e6 and worker["cpu_seconds"] > 0
    bounds = [b for b, _ in worker["latency"]["buckets"]]
    assert bounds[-1] is None and bounds[:-1] == sorted(bounds[:-1])
    assert doc["missing"] == [] and doc["expected_workers"] == 1


async def test_rooms_and_connections_lookup(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    user = "7a0c1d4e-3a56-4c39-9b55-3f0d2f6b8e11"
    c = await ws(server, token(user, rooms=["bench:*"]))
    await c.send({"type": "subscribe", "room": "bench:lookup"})
    await c.recv_type("subscribed")
    tok = token(perms=["admin:monitor"])
    _, _, body = await get(server.port, "/admin/rooms?q=lookup", tok)
    rooms = orjson.loads(body)["rooms"]
    assert [(r["room"], r["members"]) for r in rooms] == [("bench:lookup", 1)]
    _, _, body = await get(server.port, f"/admin/connections?user={user}", tok)
    [entry] = orjson.loads(body)["connections"]
    assert entry["user"] == user and entry["rooms"] == ["bench:lookup"]
    status, _, body = await get(server.port, "/admin/rooms?limit=x", tok)
    assert status == 400 and orjson.loads(body)["action"].startswith("Required action:")


async def test_presence_of_a_room(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    watcher_user = "2b3c4d5e-6f70-4a8b-9c0d-1e2f3a4b5c6e"
    watcher = await ws(server, token(watcher_user, ["admin:monitor"]))
    await watcher.send({"type": "start_monitoring", "update_interval": 30.0})
    await recv_until(watcher, "stream_started")
    tok = token(perms=["admin:monitor"])
    _, _, body = await get(server.port, "/admin/presence?room=admin:alerts", tok)
    doc = orjson.loads(body)
    assert doc["count"] == 1 and [m["user"] for m in doc["members"]] == [watcher_user]
    for room, error in (("analytics:x", "presence_disabled"), ("no-namespace", "invalid_room")):
        status, _, body = await get(server.port, f"/admin/presence?room={room}", tok)
        assert status == 400 and orjson.loads(body)["error"] == error


async def test_connection_history(domain_server: Any, db_dsn: str) -> None:
    server = await domain_server()
    user = "8a9b0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d"
    pg = await asyncpg.connect(db_dsn)
    try:
        await pg.execute(
            "INSERT INTO websocket_connections (connection_id, user_id, worker, connected_at, "
            "disconnected_at, close_code, close_reason) VALUES "
            "($1, $3, 1, now() - interval '2 minutes', now() - interval '1 minute', 4000, "
            "'closed by an operator'), ($2, $3, 0, now(), NULL, NULL, NULL)",
            f"old-{user}", f"new-{user}", user)
    finally:
        await pg.close()
    tok = token(perms=["admin:monitor"])
    _, _, body = await get(server.port, f"/admin/connection_history?user={user}", tok)
    records = orjson.loads(body)["records"]
    assert [(r["connection_id"], r["worker"], r["close_code"]) for r in records] == [
        (f"new-{user}", 0, None), (f"old-{user}", 1, 4000)]
    _, _, body = await get(server.port, f"/admin/connection_history?connection_id=old-{user}",
                           tok)
    assert [r["close_reason"] for r in orjson.loads(body)["records"]] == [
        "closed by an operator"]
    status, _, body = await get(server.port, "/admin/connection_history", tok)
    assert status == 400 and orjson.loads(body)["action"].startswith("Required action:")


async def test_connection_state_history_live_and_stored(domain_server: Any, ws: Any,
                                                        db_dsn: str) -> None:
    # With database.dsn the server runs its own connection recorder.
    server = await domain_server(store=False, config={"database": {
        "dsn": db_dsn, "record_flush_interval": 0.2}})
    user = "5d6e7f80-91a2-4b3c-8d4e-5f6a7b8c9d0e"
    client = await ws(server, token(user))
    tok = token(perms=["admin:monitor"])
    _, _, body = await get(server.port, f"/admin/connections?user={user}", tok)
    [live] = orjson.loads(body)["connections"]
    assert [h["state"] for h in live["state_history"]] == ["connecting", "authenticated"]
    conn = server.node.connection(live["connection_id"])
    assert conn is not None
    server.node.close_connection(conn, 4321, "closed by the test")
    with pytest.raises(Exception):  # noqa: B017 - any close ends recv
        await client.recv(5)
    path = f"/admin/connection_history?connection_id={live['connection_id']}"
    async with asyncio.timeout(15):  # written every database.record_flush_interval
        while True:
            _, _, body = await get(server.port, path, tok)
            records = orjson.loads(body)["records"]
            if records and records[0]["state_history"] is not None:
                break
            await asyncio.sleep(0.1)
    history = records[0]["state_history"]
    assert [(h["state"], h["close_code"]) for h in history] == [
        ("connecting", None), ("authenticated", None), ("closing", 4321), ("closed", 4321)]
    assert history[2]["reason"] == "closed by the test"
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert history[0]["at"] == live["state_history"][0]["at"]


async def test_rooms_and_connections_503_when_the_workers_cannot_be_asked(
        domain_server: Any, redis_proc: Any) -> None:
    server = await domain_server(bus=redis_bus(redis_proc.port, new_prefix(), 0))
    tok = token(perms=["admin:monitor"])
    status, _, body = await get(server.port, "/admin/rooms", tok)
    assert status == 200 and orjson.loads(body)["scope"] == "cluster"
    redis_proc.stop()
    for path in ("/admin/rooms", "/admin/connections"):
        status, _, body = await get(server.port, path, tok)
        doc = orjson.loads(body)
        assert status == 503 and doc["error"] == "bus_unavailable", doc
        assert doc["action"].startswith("Required action:")


@pytest.mark.parametrize(("path", "ctype"), [
    ("/admin/", "text/html; charset=utf-8"),
    ("/admin/console.js", "text/javascript; charset=utf-8"),
    ("/admin/console.css", "text/css; charset=utf-8"),
    ("/admin/chart.js", "text/javascript; charset=utf-8"),
])
async def test_console_files(domain_server: Any, path: str, ctype: str) -> None:
    server = await domain_server()
    status, headers, body = await get(server.port, path)
    assert status == 200 and headers["Content-Type"] == ctype and body
    assert headers["Content-Security-Policy"] == CONSOLE_CSP
    assert "script-src 'self'" in CONSOLE_CSP and "unsafe-inline" not in CONSOLE_CSP
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"]
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_console_file_missing_is_404(domain_server: Any) -> None:
    server = await domain_server()
    status, _, body = await get(server.port, "/admin/nope.js")
    assert status == 404 and orjson.loads(body)["action"].startswith("Required action:")


async def test_status_allow_refuses_other_networks(domain_server: Any) -> None:
    server = await domain_server(config={"admin": {"status_allow": ["10.0.0.0/8"]}})
    for path in ("/healthz", "/metrics"):
        status, _, body = await get(server.port, path)
        assert status == 403 and "admin.status_allow" in orjson.loads(body)["action"]
    assert server.admin.status_allowed("10.1.2.3")
    assert server.admin.status_allowed("::ffff:10.1.2.3")  # IPv4 on a dual-stack socket
    assert not server.admin.status_allowed("192.168.0.1")
    assert not server.admin.status_allowed(None)
    open_server = await domain_server()
    status, _, _ = await get(open_server.port, "/metrics")
    assert status == 200
