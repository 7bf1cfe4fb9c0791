"""Shared components raise one alert per cluster: two workers, one private Redis stopped."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from conftest import token
from rtserver.domains.insurance.alerts import DEDUPLICATED
from tests.admin.conftest import new_prefix, redis_bus
from tests.domains.insurance.helpers import nothing_but_pong, recv_until, wait_until

pytestmark = pytest.mark.timeout(90)


async def _component_rows(dsn: str, alert_type: str, component: str) -> list[Any]:
    pg = await asyncpg.connect(dsn)
    try:
        return list(await pg.fetch(
            "SELECT id, details->>'worker' AS worker FROM system_alerts "
            "WHERE alert_type = $1 AND details->>'component' = $2", alert_type, component))
    finally:
        await pg.close()


async def test_redis_outage_is_one_alert_for_two_workers(
        domain_server: Any, ws: Any, redis_proc: Any, fresh_dsn: str) -> None:
    prefix = new_prefix()
    first = await domain_server(bus=redis_bus(redis_proc.port, prefix, 0), worker_id=0,
                                dsn=fresh_dsn)
    second = await domain_server(bus=redis_bus(redis_proc.port, prefix, 1), worker_id=1,
                                 dsn=fresh_dsn)
    admins = [await ws(first, token(perms=["admin:monitor"])),
              await ws(second, token(perms=["admin:monitor"]))]
    for admin in admins:
        await admin.send({"type": "start_monitoring", "update_interval": 30.0, "id": 1})
        await recv_until(admin, "stream_started")
        assert (await recv_until(admin, "system_metrics"))["bus"]["ok"] is True
    deduplicated = DEDUPLICATED.get("component_degraded")

    redis_proc.stop()
    # Every admin (on either worker) sees the outage once, as the same stored alert.
    alerts = [await recv_until(admin, "admin_alert", timeout=20) for admin in admins]
    for alert in alerts:
        assert alert["alert_type"] == "component_degraded"
        assert alert["data"]["component"] == "bus:redis" and alert["stored"] is True
    assert alerts[0]["alert_id"] == alerts[1]["alert_id"]
    # The other worker's report was folded into it (counted), not stored again.
    await wait_until(lambda: DEDUPLICATED.get("component_degraded") == deduplicated + 1,
                     "the second worker's degraded alert was deduplicated", timeout=20)
    rows = await _component_rows(fresh_dsn, "component_degraded", "bus:redis")
    assert [r["id"] for r in rows] == [alerts[0]["alert_id"]]

    recovered_before = DEDUPLICATED.get("component_recovered")
    redis_proc.start()
    for admin in admins:
        # The restarted Redis lost the streams: gap frames and stream_gap alerts may
        # come first; the recovery is one alert.
        while True:
            frame = await recv_until(admin, "admin_alert", timeout=20,
                                     skip=("heartbeat", "room_event", "subscribed", "gap"))
            if frame["alert_type"] == "component_recovered":
                assert frame["data"]["component"] == "bus:redis"
                break
            assert frame["alert_type"] == "stream_gap", frame
    await wait_until(lambda: DEDUPLICATED.get("component_recovered") == recovered_before + 1,
                     "the second worker's recovery alert was deduplicated", timeout=20)
    rows = await _component_rows(fresh_dsn, "component_recovered", "bus:redis")
    assert len(rows) == 1


async def test_database_side_outage_is_one_alert_published_once(
        bus_hub: Any, domain_server: Any, ws: Any, fresh_dsn: str) -> None:
    """A shared component other than the bus (here the ingress listener) seen failing by
    both workers: one stored alert, published by the first worker to every admin once."""
    first = await domain_server(bus=bus_hub(0), worker_id=0, dsn=fresh_dsn)
    second = await domain_server(bus=bus_hub(1), worker_id=1, dsn=fresh_dsn)
    admins = [await ws(first, token(perms=["admin:monitor"])),
              await ws(second, token(perms=["admin:monitor"]))]
    for admin in admins:
        await admin.send({"type": "start_monitoring", "update_interval": 30.0})
        await recv_until(admin, "system_metrics", skip=("subscribed", "stream_started"))
    for state, alert_type in ((True, "component_degraded"), (False, "component_recovered")):
        deduplicated = DEDUPLICATED.get(alert_type)
        for server in (first, second):
            server.node.set_degraded("ingress", state, "LISTEN connection lost" if state
                                     else None)
        alerts = [await recv_until(admin, "admin_alert") for admin in admins]
        assert {a["alert_type"] for a in alerts} == {alert_type}
        assert alerts[0]["alert_id"] == alerts[1]["alert_id"]
        await wait_until(lambda t=alert_type, n=deduplicated: DEDUPLICATED.get(t) == n + 1,
                         "the second worker's report was deduplicated")
        for admin in admins:
            await nothing_but_pong(admin)  # no second copy was sent
        rows = await _component_rows(fresh_dsn, alert_type, "ingress")
        assert [r["id"] for r in rows] == [alerts[0]["alert_id"]]
