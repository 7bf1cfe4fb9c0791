"""Admin actions over the console's WebSocket: admin:operate required (read-only admins are
refused), a user disconnected on every worker with the chosen code, alerts resolved with a
comment, every outcome in admin_activity_logs."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from conftest import token
from tests.domains.insurance.helpers import insurance, nothing_but_pong, recv_until

pytestmark = pytest.mark.timeout(60)

OPERATOR = ["admin:monitor", "admin:operate"]
USER = "5b7f1e2a-9c3d-4e8f-a1b2-c3d4e5f60718"
ADMIN = "0e1d2c3b-4a59-4867-9a5b-4c3d2e1f0a98"


async def _audit(dsn: str, action: str, target: str) -> list[Any]:
    pg = await asyncpg.connect(dsn)
    try:
        return list(await pg.fetch(
            "SELECT admin_user_id, status, details FROM admin_activity_logs "
            "WHERE action = $1 AND resource_id = $2 ORDER BY id", action, target))
    finally:
        await pg.close()


async def _closed(client: Any) -> tuple[int | None, str | None]:
    async with asyncio.timeout(10):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


async def test_disconnect_a_user_on_every_worker(bus_hub: Any, domain_server: Any, ws: Any,
                                                 db_dsn: str) -> None:
    first = await domain_server(bus=bus_hub(0), worker_id=0)
    second = await domain_server(bus=bus_hub(1), worker_id=1)
    victims = [await ws(first, token(USER)), await ws(second, token(USER))]
    bystander = await ws(second, token())
    operator = await ws(first, token(ADMIN, OPERATOR))
    done = await operator.request({"type": "admin_disconnect", "user": USER, "code": 4000,
                                   "reason": "closed by test", "id": 1}, "admin_action_done")
    assert done["result"] == "sent" and done["target"] == USER and done["id"] == 1
    for victim in victims:
        assert await _closed(victim) == (4000, "closed by test")
    await nothing_but_pong(bystander)  # the control frame reached nobody else
    [row] = await _audit(db_dsn, "admin_disconnect", USER)
    assert row["admin_user_id"] == ADMIN and row["status"] == "sent"


async def test_disconnect_one_local_connection(domain_server: Any, ws: Any, db_dsn: str) -> None:
    server = await domain_server()
    user = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
    keep, victim = await ws(server, token(user)), await ws(server, token(user))
    conn_id = [c.id for c in server.node.hub.connections.values() if c.user == user][1]
    operator = await ws(server, token(ADMIN, OPERATOR))
    done = await operator.request({"type": "admin_disconnect", "connection_id": conn_id,
                                   "user": user, "code": 1008, "reason": "policy"},
                                  "admin_action_done")
    assert done["result"] == "closed"
    assert await _closed(victim) == (1008, "policy")
    await nothing_but_pong(keep)
    [row] = await _audit(db_dsn, "admin_disconnect", conn_id)
    assert row["status"] == "closed"


async def test_read_only_admin_cannot_act(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    victim = await ws(server, token(USER))
    viewer = await ws(server, token(perms=["admin:monitor"]))
    for frame in ({"type": "admin_disconnect", "user": USER, "code": 4000, "reason": "x"},
                  {"type": "admin_resolve_alert", "alert_id": 1, "comment": "x"}):
        error = await viewer.request(frame, "error")
        assert error["code"] == "forbidden" and "admin:operate" in error["message"]
    await nothing_but_pong(victim)


async def test_invalid_disconnects_are_refused(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    operator = await ws(server, token(ADMIN, OPERATOR))
    for frame, field in (({"code": 1006, "reason": "x", "user": USER}, "code"),
                         ({"code": 4000, "reason": "", "user": USER}, "reason"),
                         ({"code": 4000, "reason": "r" * 124, "user": USER}, "reason"),
                         ({"code": 4000, "reason": "x"}, "user")):
        error = await operator.request({"type": "admin_disconnect", **frame}, "error")
        assert error["code"] == "validation_error" and error["field"] == field
        assert error["action"].startswith("Required action:")


async def test_resolve_with_comment(domain_server: Any, ws: Any, db_dsn: str) -> None:
    server = await domain_server()
    watcher = await ws(server, token(perms=["admin:monitor"]))
    await watcher.send({"type": "start_monitoring", "update_interval": 30.0})
    await recv_until(watcher, "stream_started")
    await recv_until(watcher, "system_metrics")
    sent = await insurance(server).alerts.raise_alert("test_action", "high", "resolve me", {})
    assert sent is not None and sent.alert_id is not None
    await recv_until(watcher, "admin_alert")
    operator = await ws(server, token(ADMIN, OPERATOR))
    done = await operator.request({"type": "admin_resolve_alert", "alert_id": sent.alert_id,
                                   "comment": "fixed the cable"}, "admin_action_done")
    assert done["result"] == "resolved" and done["detail"] == "fixed the cable"
    resolved = await recv_until(watcher, "alert_resolved")
    assert resolved["alert_id"] == sent.alert_id and resolved["resolved_by"] == ADMIN
    again = await operator.request({"type": "admin_resolve_alert", "alert_id": sent.alert_id,
                                    "comment": "twice"}, "error")
    assert again["code"] == "already_resolved"
    rows = await _audit(db_dsn, "admin_resolve_alert", str(sent.alert_id))
    assert [r["status"] for r in rows] == ["resolved", "already_resolved"]
    assert '"fixed the cable"' in rows[0]["details"]
