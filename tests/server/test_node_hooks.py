"""A domain hook that fails on the connect path (connect, subscribe, unsubscribe,
disconnect) is mapped like a handler failure: the error frame with its code, a log
line, ``rtserver_handler_failures_total{type,cause}``; the next hook still runs and the
connection goes on."""

from __future__ import annotations

import secrets
import uuid
from typing import Any, ClassVar

import orjson

from rtserver import _fanout  # type: ignore[attr-defined]
from rtserver.auth import mint_token
from rtserver.bench.connect_micro import FakeTransport, FakeWs
from rtserver.bus.base import BusUnavailable
from rtserver.bus.local import LocalBus
from rtserver.config import load_config
from rtserver.connection import ConnState
from rtserver.context import Connection, HandlerContext
from rtserver.core_metrics import HANDLER_FAILURES
from rtserver.node import Node
from rtserver.plugin import DomainPlugin
from rtserver.router import Router
from rtserver.store.postgres import StoreUnavailable

ROOM = "bench:hooks-1"


class FailingHooks(DomainPlugin):
    """Each hook fails in its own way, then a second hook of the same kind records."""

    name: ClassVar[str] = "failing_hooks"
    ran: ClassVar[list[str]] = []

    def install(self, router: Router, ctx: HandlerContext) -> None:
        router.on_connect(self.connect_bug)
        router.on_connect(self.record("connect"))
        router.on_subscribe(self.subscribe_bus)
        router.on_subscribe(self.record_room("subscribe"))
        router.on_unsubscribe(self.unsubscribe_store)
        router.on_unsubscribe(self.record_room("unsubscribe"))
        router.on_disconnect(self.disconnect_bug)
        router.on_disconnect(self.record("disconnect"))

    def record(self, what: str) -> Any:
        async def hook(conn: Connection) -> None:
            self.ran.append(what)
        return hook

    def record_room(self, what: str) -> Any:
        async def hook(conn: Connection, room: str) -> None:
            self.ran.append(what)
        return hook

    async def connect_bug(self, conn: Connection) -> None:
        raise RuntimeError("connect hook bug (test)")

    async def subscribe_bus(self, conn: Connection, room: str) -> None:
        raise BusUnavailable("bus down in a subscribe hook (test)")

    async def unsubscribe_store(self, conn: Connection, room: str) -> None:
        raise StoreUnavailable("database down in an unsubscribe hook (test)")

    async def disconnect_bug(self, conn: Connection) -> None:
        raise ValueError("disconnect hook bug (test)")


def _errors(transport: FakeTransport) -> list[dict[str, Any]]:
    return [f for f in (orjson.loads(t) for t in transport.texts()) if f["type"] == "error"]


async def test_failing_hooks_are_answered_counted_and_the_next_hook_runs() -> None:
    secret = secrets.token_urlsafe(32)
    config = load_config(env={"RTSERVER_JWT_SECRET": secret})
    node = Node(config, LocalBus.from_config(config.bus), _fanout, [FailingHooks], 0, secret)
    await node.start()
    FailingHooks.ran.clear()
    before = {k: HANDLER_FAILURES.get(*k) for k in (
        ("connect", "bug"), ("subscribe", "bus"), ("unsubscribe", "store"),
        ("disconnect", "bug"))}
    transport = FakeTransport(keep=True)
    conn = node.open_connection(FakeWs(transport), str(uuid.uuid4()), "127.0.0.1:1", None)
    await node.authenticate_token(
        conn, mint_token(secret, str(uuid.uuid4()), ["publish"], ["bench:*"], 600))
    await node.handle_frame(conn, orjson.dumps({"type": "subscribe", "room": ROOM,
                                                "id": 3}).decode())
    await node.handle_frame(conn, orjson.dumps({"type": "unsubscribe", "room": ROOM,
                                                "id": 4}).decode())
    node.fanout.flush()
    assert conn.state is ConnState.AUTHENTICATED
    errors = _errors(transport)
    assert [(e["code"], e.get("id")) for e in errors] == [
        ("internal_error", None), ("bus_unavailable", None), ("store_unavailable", None)]
    assert errors[0]["message"] == "connect failed inside the server"
    assert errors[2]["message"].startswith("unsubscribe: the database is unavailable")
    await node.connection_closed(conn, 1000, "client closed")
    assert FailingHooks.ran == ["connect", "subscribe", "unsubscribe", "disconnect"]
    for key, n in before.items():
        assert HANDLER_FAILURES.get(*key) == n + 1, key
    await node.close()
