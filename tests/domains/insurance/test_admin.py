"""Admin streams (content, permissions, stop), saved dashboards, alerts, /admin/health,
and no task left behind after a disconnect."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from typing import Any

import asyncpg
import msgspec
import orjson
import pytest

from conftest import token
from rtserver.domains.insurance.ingress_kinds import AlertEvent
from tests.domains.insurance.helpers import (
    domain_ingress,
    domain_tasks,
    insurance,
    nothing_but_pong,
    recv_until,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

ADMIN_PERMS = ["admin:monitor", "admin:alerts", "audit:read", "analytics:read"]


def admin(user: str | None = None, perms: list[str] | None = None) -> str:
    return token(user=user or str(uuid.uuid4()), perms=ADMIN_PERMS if perms is None else perms)


async def monitoring(client: Any, interval: float = 0.1) -> dict[str, Any]:
    await client.send({"type": "start_monitoring", "update_interval": interval, "id": "m"})
    sub = await recv_until(client, "subscribed", skip=("heartbeat",))
    assert sub["room"] == "admin:alerts"
    started = await recv_until(client, "stream_started")
    assert started == {"type": "stream_started", "stream": "monitoring", "interval": interval,
                       "id": "m"}
    return await recv_until(client, "system_metrics")


@pytest.mark.parametrize(("message", "permission"), [
    ({"type": "start_monitoring", "update_interval": 1.0}, "admin:monitor"),
    ({"type": "start_performance", "metrics": ["rooms"]}, "admin:monitor"),
    ({"type": "start_user_activity", "filters": {"hours": 1}}, "audit:read"),
    ({"type": "resolve_alert", "alert_id": 1}, "admin:alerts"),
    ({"type": "alerts_list"}, "admin:monitor"),
    ({"type": "dashboard_save", "dashboard_name": "x", "configuration": {},
      "is_default": False}, "admin:monitor"),
    ({"type": "dashboard_list"}, "admin:monitor"),
])
async def test_admin_permissions(domain_server: Any, ws: Any, message: dict[str, Any],
                                 permission: str) -> None:
    server = await domain_server()
    others = [p for p in ADMIN_PERMS if p != permission]
    client = await ws(server, admin(perms=others))
    await client.send({**message, "id": 5})
    err = await client.recv()
    assert err["type"] == "error" and err["code"] == "forbidden" and err["id"] == 5
    assert permission in err["message"] and permission in err["action"]
    assert not domain_tasks()


async def test_monitoring_stream_content_and_stop(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    client = await ws(server, admin())
    await client.send({"type": "start_monitoring", "update_interval": 0.001, "id": 1})
    err = await client.recv()
    assert err["code"] == "validation_error" and err["field"] == "update_interval"
    metrics = await monitoring(client)
    assert metrics["worker"] == server.node.worker_id
    assert metrics["connections"]["authenticated"] == 1
    assert metrics["rooms"] == 1 and metrics["subscriptions"] == 1  # admin:alerts
    assert metrics["bus"] == {"kind": "local", "ok": True, "reason": None}
    db = metrics["database"]
    assert db["configured"] and db["ok"] and db["pool"]["max_size"] == 4
    assert metrics["errors_by_code"]["validation_error"] >= 1
    second = await recv_until(client, "system_metrics")
    assert second["rates"]["messages_in"] >= 0 and second["server_time"] > metrics["server_time"]
    await client.send({"type": "stop_monitoring", "id": 2})
    stopped = await recv_until(client, "stream_stopped", skip=("system_metrics",))
    assert stopped == {"type": "stream_stopped", "stream": "monitoring", "was_running": True,
                       "id": 2}
    assert not domain_tasks()
    # Three intervals, counted by a second monitoring client instead of a sleep: the
    # stopped stream may send nothing more meanwhile.
    witness = await ws(server, admin())
    await monitoring(witness)
    for _ in range(3):
        await recv_until(witness, "system_metrics")
    await nothing_but_pong(client)


async def test_unsubscribing_alerts_room_ends_monitoring(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    client = await ws(server, admin())
    await monitoring(client)
    assert len(domain_tasks()) == 1
    await client.send({"type": "unsubscribe", "room": "admin:alerts", "id": 3})
    await recv_until(client, "unsubscribed", skip=("system_metrics", "heartbeat"))
    assert not domain_tasks()


async def test_user_activity_stream(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    store = server.node.store
    action = f"test-{uuid.uuid4().hex[:8]}"

    async def log(status: str) -> int:
        row = await store.log_admin_activity(
            admin_user_id="auditor", action=action, resource_type="quote", resource_id="q1",
            status=status, details={"n": status}, ip_address="10.1.2.3", user_agent="t")
        return row.id

    first = await log("success")
    await log("denied")
    client = await ws(server, admin())
    await client.send({"type": "start_user_activity",
                       "filters": {"hours": 1, "action": action, "status": "success"}, "id": 1})
    assert (await client.recv())["stream"] == "user_activity"
    initial = await recv_until(client, "user_activity")
    assert initial["initial"] is True
    assert [e["id"] for e in initial["entries"]] == [first]
    assert initial["entries"][0]["ip_address"] == "10.1.2.3"
    later = await log("success")
    await log("denied")
    update = await recv_until(client, "user_activity")
    assert update["initial"] is False and [e["id"] for e in update["entries"]] == [later]
    await client.send({"type": "start_user_activity", "filters": {"hours": 1, "who": "x"}})
    err = await recv_until(client, "error")
    assert err["code"] == "validation_error" and err["field"] == "filters.who"


async def test_performance_stream(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    client = await ws(server, admin())
    await client.send({"type": "start_performance", "metrics": ["rooms", "bogus", "nope"],
                       "id": 1})
    err = await client.recv()
    assert err["code"] == "unknown_metric" and "bogus, nope" in err["message"]
    assert "handler_latency_ms" in err["action"]
    await client.send({"type": "start_performance",
                       "metrics": ["connections", "handler_latency_ms"], "id": 2})
    assert (await client.recv())["stream"] == "performance"
    perf = await recv_until(client, "performance_metrics")
    assert set(perf["metrics"]) == {"connections", "handler_latency_ms"}
    assert perf["metrics"]["connections"] == 1.0
    assert perf["metrics"]["handler_latency_ms"]["count"] >= 2
    await client.send({"type": "stop_performance", "id": 3})
    stopped = await recv_until(client, "stream_stopped", skip=("performance_metrics",))
    assert stopped["was_running"] is True
    await client.send({"type": "stop_performance", "id": 4})
    assert (await recv_until(client, "stream_stopped", skip=("performance_metrics",)))[
        "was_running"] is False


async def test_saved_dashboards(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    client = await ws(server, admin())
    await client.send({"type": "dashboard_save", "dashboard_name": "ops",
                       "configuration": [1, 2], "is_default": False, "id": 1})
    err = await client.recv()
    assert err["code"] == "validation_error" and err["field"] == "configuration"
    for name, default in (("ops", False), ("exec", True)):
        await client.send({"type": "dashboard_save", "dashboard_name": name,
                           "configuration": {"widgets": [name]}, "is_default": default,
                           "id": name})
        saved = await client.recv()
        assert saved["type"] == "dashboard_saved" and saved["id"] == name
        assert saved["dashboard"]["configuration"] == {"widgets": [name]}
    await client.send({"type": "dashboard_list", "id": 2})
    listed = await client.recv()
    assert [d["dashboard_name"] for d in listed["dashboards"]] == ["exec", "ops"]
    assert listed["dashboards"][0]["is_default"] is True


async def test_alert_flow_raise_store_resolve(domain_server: Any, ws: Any,
                                              db_dsn: str) -> None:
    server = await domain_server()
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    a = await ws(server, admin(user_a))
    b = await ws(server, admin(user_b))
    await monitoring(a, 5.0)
    await monitoring(b, 5.0)
    server.node.set_degraded("database", True, "test outage")
    alert_a = await recv_until(a, "admin_alert", skip=("system_metrics",))
    alert_b = await recv_until(b, "admin_alert", skip=("system_metrics",))
    assert alert_a == alert_b
    assert alert_a["alert_type"] == "component_degraded" and alert_a["severity"] == "critical"
    assert alert_a["stored"] is True and alert_a["data"]["component"] == "database"
    assert "test outage" in alert_a["message"]
    server.node.set_degraded("database", False, None)
    recovered = await recv_until(a, "admin_alert", skip=("system_metrics",))
    assert recovered["alert_type"] == "component_recovered" and recovered["severity"] == "low"
    await recv_until(b, "admin_alert", skip=("system_metrics",))

    pg = await asyncpg.connect(db_dsn)
    try:
        row = await pg.fetchrow("SELECT * FROM system_alerts WHERE id = $1", alert_a["alert_id"])
        assert row["alert_type"] == "component_degraded" and not row["resolved"]
        await a.send({"type": "alerts_list", "id": "l"})
        listed = await recv_until(a, "alerts", skip=("system_metrics",))
        assert alert_a["alert_id"] in [x["id"] for x in listed["alerts"]]

        await a.send({"type": "resolve_alert", "alert_id": alert_a["alert_id"], "id": "r"})
        mine = await recv_until(a, "alert_resolved", skip=("system_metrics",))
        assert mine["id"] == "r" and mine["resolved_by"] == user_a
        theirs = await recv_until(b, "alert_resolved", skip=("system_metrics",))
        assert theirs["alert_id"] == alert_a["alert_id"] and theirs["resolved_by"] == user_a
        row = await pg.fetchrow("SELECT * FROM system_alerts WHERE id = $1", alert_a["alert_id"])
        assert row["resolved"] and row["resolved_by"] == user_a
        logged = await pg.fetchval(
            "SELECT count(*) FROM admin_activity_logs WHERE admin_user_id = $1 AND "
            "action = 'resolve_alert' AND resource_id = $2", user_a, str(alert_a["alert_id"]))
        assert logged == 1
    finally:
        await pg.close()
    await b.send({"type": "resolve_alert", "alert_id": alert_a["alert_id"], "id": "again"})
    again = await recv_until(b, "error", skip=("system_metrics",))
    assert again["code"] == "already_resolved" and user_a in again["message"]
    await b.send({"type": "resolve_alert", "alert_id": 10**12, "id": "x"})
    assert (await recv_until(b, "error", skip=("system_metrics",)))["code"] == "not_found"

    # Ingress alerts and server code reach the admins the same way.
    await domain_ingress(server, AlertEvent(
        alert_type="rating_engine", severity="high", message="rating engine slow",
        details=msgspec.Raw(b'{"p99_ms":900}')))
    backend = await recv_until(a, "admin_alert", skip=("system_metrics",))
    assert backend["alert_type"] == "rating_engine" and backend["data"] == {"p99_ms": 900}
    sent = await insurance(server).alerts.raise_alert(
        "worker_respawned", "medium", "worker 1 respawned", {"worker": 1})
    assert (await recv_until(b, "admin_alert", skip=("system_metrics",)))[
        "alert_type"] == "rating_engine"
    got = await recv_until(b, "admin_alert", skip=("system_metrics",))
    assert got["alert_id"] == sent.alert_id and got["alert_type"] == "worker_respawned"


async def test_no_task_left_after_disconnect(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    d = insurance(server)
    client = await ws(server, admin())
    await monitoring(client, 0.2)
    await client.send({"type": "start_performance", "metrics": ["rooms"], "id": "p"})
    await recv_until(client, "stream_started", skip=("system_metrics", "heartbeat"))
    await client.send({"type": "start_user_activity", "filters": {"hours": 1}, "id": "u"})
    await recv_until(client, "stream_started", skip=("system_metrics", "performance_metrics"))
    await client.send({"type": "start_analytics", "dashboard": "quotes",
                       "filters": {"hours": 1}, "id": "q"})
    await recv_until(client, "analytics_started",
                     skip=("system_metrics", "performance_metrics", "user_activity",
                           "subscribed"))
    names = domain_tasks()
    assert len(names) == 4, names
    before = {t for t in asyncio.all_tasks() if not t.done()}
    await client.ws.close()
    await wait_until(lambda: not domain_tasks(), "every stream task ended")
    assert not d.admin.streams and not d.admin.monitors and not d.analytics.streams
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before
    assert not [t.get_name() for t in leftover if t.get_name().startswith("rtserver-domain")]


async def test_admin_health_route(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    await ws(server, admin())
    await ws(server, admin())

    def fetch() -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/admin/health",
            headers={"Authorization": "Bearer " + token(perms=["admin:monitor"])})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())

    status, doc = await asyncio.to_thread(fetch)
    assert status == 200 and doc["status"] == "ok"
    assert doc["connections"] == 2 == len(server.node.hub.connections)
    assert doc["database"]["ok"] is True and doc["database"]["ping_ms"] > 0
    assert doc["database"]["unresolved_alerts"] >= 0
    assert doc["domain"]["started"] is True and doc["domain"]["monitoring_streams"] == 0
    server.node.set_degraded("bus:local", True, "injected")
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(fetch)
        assert info.value.code == 503
    finally:
        server.node.set_degraded("bus:local", False, None)
