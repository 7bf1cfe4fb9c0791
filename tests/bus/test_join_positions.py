"""Joining a room on a worker of the embedded bus (a real hub on a Unix socket, a node
without client sockets): the first joiner's position comes with the interest, later
joiners take the last publication handed out locally, without a round trip to the hub,
and each new member's stream goes on from its ``subscribed`` without a gap or a
duplicate; while the hub is gone the join is refused as before."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any

import orjson

from rtserver import _fanout  # type: ignore[attr-defined]
from rtserver.auth import mint_token
from rtserver.bench.connect_micro import FakeTransport, FakeWs
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import _M_HUB_FRAMES as HUB_FRAMES
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.config import load_config
from rtserver.connection import ConnState
from rtserver.node import Node

from .conftest import Recorder, bus_settings

ROOM = "bench:positions-1"


def _hub_frames(kind: str) -> float:
    return HUB_FRAMES.get(kind)


async def _node(runtime_dir: str) -> tuple[Node, str]:
    secret = secrets.token_urlsafe(32)
    config = load_config(env={"RTSERVER_JWT_SECRET": secret})
    node = Node(config, EmbeddedBus(bus_settings(runtime_dir, 0)), _fanout, [], 0, secret)
    await node.start()
    return node, secret


async def _member(node: Node, secret: str) -> tuple[Any, FakeTransport]:
    transport = FakeTransport(keep=True)
    conn = node.open_connection(FakeWs(transport), str(uuid.uuid4()), "127.0.0.1:1", None)
    token = mint_token(secret, str(uuid.uuid4()), ["publish"], ["bench:*"], 600)
    await node.authenticate_token(conn, token)
    assert conn.state is ConnState.AUTHENTICATED
    await node.handle_frame(conn, orjson.dumps({"type": "subscribe", "room": ROOM}).decode())
    return conn, transport


def _frames(node: Node, transport: FakeTransport) -> list[dict[str, Any]]:
    node.fanout.flush()
    frames = [orjson.loads(t) for t in transport.texts()]
    return [f for f in frames if f["type"] in ("subscribed", "message", "gap")]


async def _delivered(node: Node, transport: FakeTransport, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        frames = _frames(node, transport)
        if len([f for f in frames if f["type"] == "message"]) >= n:
            return frames
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} messages: {_frames(node, transport)}")


async def test_later_joiners_take_the_local_position_and_miss_nothing(
        hub: EmbeddedBusServer, runtime_dir: str) -> None:
    publisher = EmbeddedBus(bus_settings(runtime_dir, 1))
    await publisher.start(Recorder())
    node, secret = await _node(runtime_dir)
    try:
        for i in range(3):  # before anyone here is in the room
            await publisher.publish(ROOM, b'{"type":"message","room":"%b","data":%d}'
                                    % (ROOM.encode(), i))
        positions_before = _hub_frames("position")
        _, ta = await _member(node, secret)
        [sub_a] = _frames(node, ta)
        assert sub_a["type"] == "subscribed" and sub_a["seq"] == 3
        for i in range(3, 6):
            await publisher.publish(ROOM, b'{"type":"message","room":"%b","data":%d}'
                                    % (ROOM.encode(), i))
        await _delivered(node, ta, 3)
        _, tb = await _member(node, secret)
        [sub_b] = _frames(node, tb)
        # the position of the last publication handed out here, in the same epoch
        assert (sub_b["seq"], sub_b["epoch"]) == (6, sub_a["epoch"])
        assert _hub_frames("position") == positions_before  # neither join asked the hub
        for i in range(6, 9):
            await publisher.publish(ROOM, b'{"type":"message","room":"%b","data":%d}'
                                    % (ROOM.encode(), i))
        got_a = [f["seq"] for f in (await _delivered(node, ta, 6)) if f["type"] == "message"]
        got_b = [f["seq"] for f in (await _delivered(node, tb, 3)) if f["type"] == "message"]
        assert got_a == [4, 5, 6, 7, 8, 9] and got_b == [7, 8, 9]
        assert not node.rooms._held
    finally:
        await node.close()
        await publisher.close()


async def test_without_the_hub_a_join_is_refused_not_answered_locally(
        hub: EmbeddedBusServer, runtime_dir: str) -> None:
    node, secret = await _node(runtime_dir)
    try:
        _, ta = await _member(node, secret)
        assert _frames(node, ta)[0]["type"] == "subscribed"
        await hub.close()
        for _ in range(200):
            if not node.bus.health().ok:
                break
            await asyncio.sleep(0.01)
        assert not node.bus.ordered_positions(ROOM)
        transport = FakeTransport(keep=True)
        conn = node.open_connection(FakeWs(transport), str(uuid.uuid4()), "127.0.0.1:2", None)
        token = mint_token(secret, str(uuid.uuid4()), ["publish"], ["bench:*"], 600)
        await node.authenticate_token(conn, token)
        await node.handle_frame(conn, orjson.dumps({"type": "subscribe", "room": ROOM,
                                                    "id": 4}).decode())
        node.fanout.flush()
        frames = [orjson.loads(t) for t in transport.texts()]
        error = [f for f in frames if f["type"] == "error"]
        assert error and error[-1]["code"] == "bus_unavailable" and error[-1]["id"] == 4, frames
        assert not [f for f in frames if f["type"] == "subscribed"]
    finally:
        await node.close()
