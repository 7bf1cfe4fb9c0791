"""Quote activity (room admin:quote_activity): an applied edit and a backend update reach the
admins on every worker, without field values; admin:monitor is required."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from conftest import token
from rtserver.domains.insurance.ingress_kinds import QuoteUpdate
from rtserver.domains.insurance.quote_activity import QUOTE_ACTIVITY_ROOM
from tests.domains.insurance.helpers import domain_ingress, recv_until
from tests.domains.insurance.test_quotes import editor, new_quote, subscribed

pytestmark = pytest.mark.timeout(60)


async def watching(ws: Any, server: Any) -> Any:
    admin = await ws(server, token(perms=["admin:monitor"]))
    await admin.send({"type": "subscribe", "room": QUOTE_ACTIVITY_ROOM, "id": "qa"})
    sub = await recv_until(admin, "subscribed", skip=("heartbeat",))
    assert sub["room"] == QUOTE_ACTIVITY_ROOM and sub["id"] == "qa"
    return admin


async def test_edit_and_backend_update_reach_admins_on_both_workers(
        domain_server: Any, ws: Any, bus_hub: Any) -> None:
    first = await domain_server(bus=bus_hub(0), worker_id=0)
    second = await domain_server(bus=bus_hub(1), worker_id=1)
    admins = [await watching(ws, first), await watching(ws, second)]
    quote = await new_quote(first)
    user = str(uuid.uuid4())
    client = await ws(first, editor(quote, user))
    await subscribed(client, quote)
    await client.send({"type": "quote_edit", "quote_id": str(quote.id), "field": "driver_name",
                       "value": "Private Name", "base_version": 1, "id": "e1"})
    assert (await recv_until(client, "ack"))["version"] == 2
    for admin in admins:
        event = await recv_until(admin, "quote_activity")
        assert {k: event[k] for k in ("room", "kind", "quote_id", "version", "field", "user",
                                      "update_type", "worker")} == {
            "room": QUOTE_ACTIVITY_ROOM, "kind": "field_update", "quote_id": str(quote.id),
            "version": 2, "field": "driver_name", "user": user, "update_type": None,
            "worker": 0}
        assert "Private Name" not in msgspec.json.encode(event).decode()
        assert isinstance(event["seq"], int) and event["at"].endswith("Z")

    await domain_ingress(second, QuoteUpdate(quote_id=quote.id, update_type="premium",
                                             data=msgspec.Raw(b'{"premium":1}'), version=3))
    for admin in admins:
        event = await recv_until(admin, "quote_activity")
        assert (event["kind"], event["update_type"], event["version"], event["user"],
                event["worker"]) == ("quote_update", "premium", 3, None, 1)


async def test_quote_activity_needs_admin_monitor(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    client = await ws(server, token(perms=["quote:read", "audit:read"]))
    await client.send({"type": "subscribe", "room": QUOTE_ACTIVITY_ROOM, "id": 1})
    refused = await recv_until(client, "error")
    assert refused["code"] == "forbidden" and "admin:monitor" in refused["action"]
