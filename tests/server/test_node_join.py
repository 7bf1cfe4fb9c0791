"""Joining one room without ``since`` (the connect path's subscribe), on a node without
sockets: a publication arriving while the join waits for the bus comes after
``subscribed``; a bus failure answers ``bus_unavailable`` and leaves no trace; a
connection closed while joining gets no ``subscribed``; every connect logs its
transitions."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any

import orjson

from rtserver import _fanout  # type: ignore[attr-defined]
from rtserver.auth import mint_token
from rtserver.bench.connect_micro import FakeTransport, FakeWs
from rtserver.bus.base import BusUnavailable, StreamPosition
from rtserver.bus.local import LocalBus
from rtserver.config import load_config
from rtserver.connection import ConnState
from rtserver.node import Node

ROOM = "bench:join-1"


class GatedBus(LocalBus):
    """A LocalBus whose ``position`` reads the position, then waits for ``gate`` (a
    reply in flight); ``fail`` makes ``add_interest`` raise."""

    def __init__(self, history: Any) -> None:
        super().__init__(history)
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.fail = False

    async def add_interest(self, room: str) -> None:
        if self.fail and room != "$broadcast":
            raise BusUnavailable("the bus is down (test)")
        await super().add_interest(room)

    async def position(self, room: str) -> StreamPosition:
        pos = await super().position(room)
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return pos


async def _node() -> tuple[Node, GatedBus, str]:
    secret = secrets.token_urlsafe(32)
    config = load_config(env={"RTSERVER_JWT_SECRET": secret})
    bus = GatedBus.from_config(config.bus)
    assert isinstance(bus, GatedBus)
    node = Node(config, bus, _fanout, [], 0, secret)
    await node.start()
    return node, bus, secret


async def _authenticated(node: Node, secret: str) -> tuple[Any, FakeTransport]:
    transport = FakeTransport(keep=True)
    conn = node.open_connection(FakeWs(transport), str(uuid.uuid4()), "127.0.0.1:1", None)
    token = mint_token(secret, str(uuid.uuid4()), ["publish"], ["bench:*"], 600)
    await node.authenticate_token(conn, token)
    assert conn.state is ConnState.AUTHENTICATED
    return conn, transport


def _frames(transport: FakeTransport) -> list[dict[str, Any]]:
    frames = [orjson.loads(t) for t in transport.texts()]
    return [f for f in frames if f["type"] not in ("connection", "authenticated")]


async def test_publication_while_joining_comes_after_subscribed() -> None:
    node, bus, secret = await _node()
    member, _ = await _authenticated(node, secret)
    await node.handle_frame(member, orjson.dumps({"type": "subscribe", "room": ROOM}).decode())
    conn, transport = await _authenticated(node, secret)
    bus.gate = asyncio.Event()
    join = asyncio.create_task(node.handle_frame(
        conn, orjson.dumps({"type": "subscribe", "room": ROOM, "id": 5}).decode()))
    await bus.waiting.wait()
    assert ROOM in conn.rooms  # in the room's table before the bus answered
    await node.send_to_room(ROOM, b'{"type":"message","room":"bench:join-1","data":1}')
    bus.gate.set()
    await join
    node.fanout.flush()
    frames = _frames(transport)
    assert [f["type"] for f in frames] == ["subscribed", "message"], frames
    assert frames[0] == {"type": "subscribed", "room": ROOM, "seq": 0,
                         "epoch": frames[0]["epoch"], "id": 5}
    assert frames[1]["seq"] == 1 and frames[1]["data"] == 1
    assert not node.rooms._held
    await node.close()


async def test_bus_failure_answers_and_leaves_no_trace() -> None:
    node, bus, secret = await _node()
    conn, transport = await _authenticated(node, secret)
    bus.fail = True
    await node.handle_frame(conn, orjson.dumps({"type": "subscribe", "room": ROOM,
                                                "id": 2}).decode())
    node.fanout.flush()
    [error] = _frames(transport)
    assert error["type"] == "error" and error["code"] == "bus_unavailable" and error["id"] == 2
    assert not conn.rooms and ROOM not in node.hub.rooms and not node.rooms._held
    assert ROOM not in node.rooms._interest
    bus.fail = False  # the next try joins
    await node.handle_frame(conn, orjson.dumps({"type": "subscribe", "room": ROOM}).decode())
    node.fanout.flush()
    assert _frames(transport)[-1]["type"] == "subscribed" and ROOM in conn.rooms
    await node.close()


async def test_closed_while_joining_gets_no_subscribed() -> None:
    node, bus, secret = await _node()
    conn, transport = await _authenticated(node, secret)
    bus.gate = asyncio.Event()
    join = asyncio.create_task(node.handle_frame(
        conn, orjson.dumps({"type": "subscribe", "room": ROOM}).decode()))
    await bus.waiting.wait()
    await node.connection_closed(conn, 1006, "connection lost without a close frame")
    bus.gate.set()
    await join
    node.fanout.flush()
    assert _frames(transport) == []
    assert not node.hub.rooms and not node.hub.connections and not node.rooms._held
    assert conn.state is ConnState.CLOSED
    await node.close()
