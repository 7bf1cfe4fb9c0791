"""Two workers sharing the embedded bus (the supervisor's hub, in this process):
analytics computed once per interval and delivered to viewers on both workers, racing
editors across workers, alerts reaching admins on the other worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from conftest import token
from rtserver.store import Store
from tests.domains.insurance.helpers import insurance, recv_until
from tests.store import pgutil

pytestmark = pytest.mark.timeout(60)


async def two_workers(bus_hub: Any, domain_server: Any) -> tuple[Any, Any]:
    first = await domain_server(bus=bus_hub(0), worker_id=0)
    second = await domain_server(bus=bus_hub(1), worker_id=1)
    return first, second


async def test_analytics_computed_once_for_viewers_on_both_workers(
        bus_hub: Any, domain_server: Any, ws: Any) -> None:
    first, second = await two_workers(bus_hub, domain_server)
    viewer = token(perms=["analytics:read"])
    v1, v2 = await ws(first, viewer), await ws(second, viewer)
    filters = {"hours": 17}
    for v in (v1, v2):
        await v.send({"type": "start_analytics", "dashboard": "conversion", "filters": filters})
        await recv_until(v, "analytics_started")

    async def updates(client: Any, count: int) -> list[dict[str, Any]]:
        return [await recv_until(client, "analytics_update") for _ in range(count)]

    got1, got2 = await asyncio.gather(updates(v1, 8), updates(v2, 8))
    n1 = [u["interval_no"] for u in got1]
    n2 = [u["interval_no"] for u in got2]
    # Every interval once, on both workers, whoever computed it.
    assert n1 == sorted(set(n1)) and n2 == sorted(set(n2))
    common = sorted(set(n1) & set(n2))
    assert len(common) >= 6
    assert common == list(range(common[0], common[-1] + 1))
    by_interval = {u["interval_no"]: u["worker"] for u in got1}
    assert all(by_interval[u["interval_no"]] == u["worker"]
               for u in got2 if u["interval_no"] in by_interval)
    a1, a2 = insurance(first).analytics, insurance(second).analytics
    # Each worker tried every interval; the pair computed each once.
    assert abs((a1.computed + a2.computed) - (a1.skipped + a2.skipped)) <= 2
    assert a1.skipped + a2.skipped >= len(common) - 2


async def test_racing_editors_across_workers_see_the_winner(
        bus_hub: Any, domain_server: Any, ws: Any) -> None:
    first, second = await two_workers(bus_hub, domain_server)
    store = first.node.store
    assert isinstance(store, Store)
    quote = await pgutil.insert_quote(store, customer_id=None, state="OR", status="draft",
                                      total_premium=None, fields={}, created_at=None)
    qid = str(quote.id)
    tok = token(perms=["quote:read", "quote:write"], rooms=[f"quote:{qid}"])
    a, b = await ws(first, tok), await ws(second, tok)
    for client in (a, b):
        await client.send({"type": "quote_subscribe", "quote_id": qid})
        await recv_until(client, "quote_state")
    for client, name in ((a, "a"), (b, "b")):
        await client.send({"type": "quote_edit", "quote_id": qid, "field": "vehicle_value",
                           "value": 100 if name == "a" else 200, "base_version": 1,
                           "id": name})

    async def outcome(client: Any) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        while not any(f["type"] in ("ack", "error") for f in frames):
            frames.append(await client.recv())
        return frames

    fa, fb = await asyncio.gather(outcome(a), outcome(b))
    final = {f["type"]: f for f in fa + fb if f["type"] in ("ack", "error")}
    assert set(final) == {"ack", "error"}
    ack, conflict = final["ack"], final["error"]
    assert conflict["code"] == "conflict" and conflict["current_version"] == 2
    loser, seen = (b, fb) if ack["id"] == "a" else (a, fa)
    early = [f for f in seen if f["type"] == "field_update"]
    update = early[0] if early else await recv_until(loser, "field_update")
    assert update["version"] == 2 and update["value"] == conflict["current_value"]
    assert update["seq"] == ack["seq"]


async def test_alert_on_one_worker_reaches_admin_on_the_other(
        bus_hub: Any, domain_server: Any, ws: Any) -> None:
    first, second = await two_workers(bus_hub, domain_server)
    admin = await ws(second, token(user=str(uuid.uuid4()), perms=["admin:monitor"]))
    await admin.send({"type": "start_monitoring", "update_interval": 30.0})
    await recv_until(admin, "system_metrics", skip=("subscribed", "stream_started"))
    first.node.set_degraded("ingress", True, "injected on worker 0")
    alert = await recv_until(admin, "admin_alert")
    assert alert["worker"] == 0 and alert["data"]["component"] == "ingress"
    assert alert["severity"] == "high" and alert["stored"] is True
    first.node.set_degraded("ingress", False, None)
    assert (await recv_until(admin, "admin_alert"))["alert_type"] == "component_recovered"
