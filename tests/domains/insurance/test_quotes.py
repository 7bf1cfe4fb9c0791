"""Live quotes: state then updates, access paths, editing, conflicts, races, focus."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest

from conftest import token
from rtserver.domains.insurance.ingress_kinds import CalculationProgress, QuoteUpdate
from rtserver.server import RtServer
from rtserver.store import Quote, Store
from tests.domains.insurance.helpers import (
    domain_ingress,
    nothing_but_pong,
    recv_until,
    wait_until,
)
from tests.store import pgutil

pytestmark = pytest.mark.timeout(60)


async def new_quote(server: RtServer, *, customer: uuid.UUID | None = None,
                    fields: dict[str, Any] | None = None) -> Quote:
    store = server.node.store
    assert isinstance(store, Store)
    customer_id = None
    if customer is not None:
        async with store.acquire("test_customer") as conn:
            await conn.execute("INSERT INTO customers (id, email, state) VALUES ($1, $2, 'CA')",
                               customer, f"{customer}@example.test")
        customer_id = customer
    return await pgutil.insert_quote(store, customer_id=customer_id, state="CA", status="draft",
                                     total_premium=None, fields=fields or {"driver_name": "Ann"},
                                     created_at=None)


def editor(quote: Quote, user: str | None = None, perms: tuple[str, ...] = (
        "quote:read", "quote:write")) -> str:
    return token(user=user, perms=list(perms), rooms=[f"quote:{quote.id}"])


async def subscribed(client: Any, quote: Quote) -> dict[str, Any]:
    await client.send({"type": "quote_subscribe", "quote_id": str(quote.id), "id": "s"})
    sub = await recv_until(client, "subscribed")
    assert sub["room"] == f"quote:{quote.id}" and sub["id"] == "s"
    state = await recv_until(client, "quote_state")
    assert state["id"] == "s"
    return state


async def test_state_then_backend_updates_in_order(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    quote = await new_quote(server, fields={"driver_name": "Ann", "vehicle_value": 1000})
    client = await ws(server, editor(quote))
    state = await subscribed(client, quote)
    assert state["version"] == 1 and state["quote"]["version"] == 1
    assert state["quote"]["fields"] == {"driver_name": "Ann", "vehicle_value": 1000}
    assert state["editable_fields"]["vehicle_value"] == "number"

    for version in (2, 3, 4):
        await domain_ingress(server, QuoteUpdate(
            quote_id=quote.id, update_type="premium", data=msgspec.Raw(b'{"premium":%d}' % version),
            version=version))
    await domain_ingress(server, CalculationProgress(
        quote_id=quote.id, progress=0.5, stage="rating"))
    got = [await recv_until(client, "quote_update") for _ in range(3)]
    assert [m["version"] for m in got] == [2, 3, 4]
    assert [m["data"]["premium"] for m in got] == [2, 3, 4]
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    progress = await recv_until(client, "calculation_progress")
    assert progress == {"type": "calculation_progress", "quote_id": str(quote.id),
                        "progress": 0.5, "stage": "rating", "seq": seqs[-1] + 1}


async def test_access_paths(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    owner = uuid.uuid4()
    quote = await new_quote(server, customer=owner)
    qid = str(quote.id)

    async def attempt(tok: str, quote_id: str = qid) -> dict[str, Any]:
        client = await ws(server, tok)
        await client.send({"type": "quote_subscribe", "quote_id": quote_id, "id": 7})
        return await client.recv()

    no_perm = await attempt(token(perms=[], rooms=[f"quote:{qid}"]))
    assert no_perm["type"] == "error" and no_perm["code"] == "forbidden"
    assert "quote:read" in no_perm["message"] and no_perm["action"].startswith("Required action")
    no_grant = await attempt(token(perms=["quote:read"], rooms=["quote:other"]))
    assert no_grant["code"] == "forbidden" and no_grant["id"] == 7
    missing = await attempt(token(perms=["quote:read"], rooms=["quote:*"]), str(uuid.uuid4()))
    assert missing["code"] == "not_found"
    # Ownership instead of a grant: the quote's customer is the token's user.
    as_owner = await attempt(token(user=str(owner), perms=["quote:read"]))
    assert as_owner["type"] == "subscribed"
    # Editing without quote:write; editing without a subscription.
    reader = await ws(server, token(perms=["quote:read"], rooms=[f"quote:{qid}"]))
    await subscribed(reader, quote)
    await reader.send({"type": "quote_edit", "quote_id": qid, "field": "driver_name",
                       "value": "Bo", "base_version": 1, "id": 1})
    denied = await recv_until(reader, "error")
    assert denied["code"] == "forbidden" and "quote:write" in denied["message"]
    outsider = await ws(server, editor(quote))
    await outsider.send({"type": "quote_edit", "quote_id": qid, "field": "driver_name",
                         "value": "Bo", "base_version": 1, "id": 2})
    assert (await outsider.recv())["code"] == "not_subscribed"
    # Subscribing twice is an error, not a second state.
    await reader.send({"type": "quote_subscribe", "quote_id": qid, "id": 3})
    assert (await recv_until(reader, "error"))["code"] == "already_subscribed"


async def test_without_database_quotes_are_unavailable(domain_server: Any, ws: Any) -> None:
    server = await domain_server(store=False)
    client = await ws(server, token(perms=["quote:read"], rooms=["quote:*"]))
    await client.send({"type": "quote_subscribe", "quote_id": str(uuid.uuid4()), "id": 1})
    err = await client.recv()
    assert err["code"] == "feature_unavailable" and "--database" in err["action"]


async def test_edit_ack_field_update_and_conflict(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    quote = await new_quote(server)
    qid = str(quote.id)
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    a = await ws(server, editor(quote, user_a))
    b = await ws(server, editor(quote, user_b))
    await subscribed(a, quote)
    await subscribed(b, quote)

    await a.send({"type": "quote_edit", "quote_id": qid, "field": "vehicle_value",
                  "value": 25000.5, "base_version": 1, "id": "e1"})
    ack = await recv_until(a, "ack")
    assert ack["version"] == 2 and ack["id"] == "e1" and ack["field"] == "vehicle_value"
    update = await recv_until(b, "field_update")
    assert update == {"type": "field_update", "quote_id": qid, "field": "vehicle_value",
                      "value": 25000.5, "version": 2, "updated_by": user_a, "seq": ack["seq"]}
    await nothing_but_pong(a)  # the editor does not get its own field_update

    await b.send({"type": "quote_edit", "quote_id": qid, "field": "vehicle_value",
                  "value": 1.0, "base_version": 1, "id": "e2"})
    conflict = await recv_until(b, "error")
    assert conflict["code"] == "conflict" and conflict["id"] == "e2"
    assert conflict["current_value"] == 25000.5 and conflict["current_version"] == 2
    assert "base_version 2" in conflict["action"]
    # A field never set conflicts with current_value null.
    await b.send({"type": "quote_edit", "quote_id": qid, "field": "garaged",
                  "value": True, "base_version": 1})
    conflict = await recv_until(b, "error")
    assert conflict["current_value"] is None and conflict["current_version"] == 2
    stored = await server.node.store.get_quote(quote.id)  # type: ignore[union-attr]
    assert msgspec.json.decode(stored.fields)["vehicle_value"] == 25000.5
    assert stored.version == 2 and stored.updated_by == user_a


async def test_racing_editors_on_two_workers(domain_server: Any, ws: Any) -> None:
    first = await domain_server()
    second = await domain_server()
    quote = await new_quote(first)
    qid = str(quote.id)
    a = await ws(first, editor(quote))
    b = await ws(second, editor(quote))
    await subscribed(a, quote)
    await subscribed(b, quote)
    version = 1
    for round_ in range(6):
        for client, name in ((a, "a"), (b, "b")):
            await client.send({"type": "quote_edit", "quote_id": qid, "field": "driver_name",
                               "value": f"{name}{round_}", "base_version": version,
                               "id": name})
        replies = await asyncio.gather(_ack_or_error(a), _ack_or_error(b))
        kinds = sorted(r["type"] for r in replies)
        assert kinds == ["ack", "error"], replies
        winner = next(r for r in replies if r["type"] == "ack")
        loser = next(r for r in replies if r["type"] == "error")
        assert loser["code"] == "conflict" and loser["current_version"] == version + 1
        assert loser["current_value"] == f"{winner['id']}{round_}"
        version = winner["version"]
        assert version == round_ + 2
    stored = await first.node.store.get_quote(quote.id)  # type: ignore[union-attr]
    assert stored.version == 7


async def _ack_or_error(client: Any) -> dict[str, Any]:
    while True:
        msg = await client.recv()
        if msg["type"] in ("ack", "error"):
            return msg  # type: ignore[no-any-return]


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("premium", 10, "not editable"),
    ("vehicle_value", "lots", "must be a number"),
    ("driver_count", 1.5, "must be an integer"),
    ("garaged", "yes", "true or false"),
    ("start_date", "2026-13-01", "ISO date"),
    ("driver_name", "x" * 21, "over the limit of 20"),
])
async def test_invalid_field_or_value(domain_server: Any, ws: Any, field: str, value: Any,
                                      fragment: str) -> None:
    server = await domain_server()
    quote = await new_quote(server)
    client = await ws(server, editor(quote))
    await subscribed(client, quote)
    await client.send({"type": "quote_edit", "quote_id": str(quote.id), "field": field,
                       "value": value, "base_version": 1, "id": 9})
    err = await recv_until(client, "error")
    assert err["code"] == "validation_error" and err["field"] == field and err["id"] == 9
    assert fragment in err["message"]
    stored = await server.node.store.get_quote(quote.id)  # type: ignore[union-attr]
    assert stored.version == 1


async def test_field_focus_and_blur_on_disconnect(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    quote = await new_quote(server)
    qid = str(quote.id)
    user_a = str(uuid.uuid4())
    a = await ws(server, editor(quote, user_a))
    b = await ws(server, editor(quote))
    await subscribed(a, quote)
    await subscribed(b, quote)
    await a.send({"type": "field_focus", "quote_id": qid, "field": "driver_name"})
    focus = await recv_until(b, "field_focus")
    assert focus["user"] == user_a and focus["field"] == "driver_name"
    await a.send({"type": "field_focus", "quote_id": qid, "field": "bogus", "id": 1})
    assert (await recv_until(a, "error"))["field"] == "bogus"
    await a.ws.close()
    blur = await recv_until(b, "field_blur")
    assert blur["user"] == user_a and blur["field"] == "driver_name"
    await wait_until(lambda: not server.node.hub.connections.keys() - {
        c for c in server.node.hub.connections if c != focus["connection_id"]},
        "a's connection is gone")
