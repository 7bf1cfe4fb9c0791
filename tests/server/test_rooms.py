"""Rooms over real sockets: fan-out with seq, users, presence, events, ACL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from conftest import Client, token
from rtserver.protocol.messages import Pong
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


async def test_publish_reaches_all_members_with_consecutive_seq(connect_client: Connect) -> None:
    members = [await connect_client(token(rooms=["bench:*"])) for _ in range(5)]
    for m in members:
        assert (await m.request({"type": "subscribe", "room": "bench:r"}, "subscribed"))[
            "seq"] == 0
    outsider = await connect_client(token(rooms=["bench:*"]))
    await outsider.request({"type": "subscribe", "room": "bench:other"}, "subscribed")
    publisher = await connect_client(token(perms=["publish"], rooms=["bench:r"]))
    for i in range(20):
        await publisher.send({"type": "publish", "room": "bench:r", "data": {"i": i}, "id": i})
    acks = [await publisher.recv_type("ack") for _ in range(20)]
    assert [a["seq"] for a in acks] == list(range(1, 21))
    assert [a["id"] for a in acks] == list(range(20))
    for m in members:
        got = [await m.recv_type("message") for _ in range(20)]
        assert [g["seq"] for g in got] == list(range(1, 21))
        assert [g["data"]["i"] for g in got] == list(range(20))
        assert all(g["room"] == "bench:r" and g["from"] for g in got)
    # a late subscriber learns the current seq
    late = await connect_client(token(rooms=["bench:*"]))
    assert (await late.request({"type": "subscribe", "room": "bench:r"}, "subscribed"))[
        "seq"] == 20
    with pytest.raises(TimeoutError):
        await outsider.recv_type("message", timeout=0.2)


async def test_publish_without_permission(connect_client: Connect) -> None:
    client = await connect_client(token(rooms=["bench:*"]))
    err = await client.request({"type": "publish", "room": "bench:r", "data": 1, "id": 9},
                               "error")
    assert err["code"] == "forbidden" and err["id"] == 9 and "publish" in err["action"]


async def test_unsubscribe_stops_delivery(connect_client: Connect) -> None:
    member = await connect_client(token(rooms=["bench:*"]))
    await member.request({"type": "subscribe", "room": "bench:u"}, "subscribed")
    assert (await member.request({"type": "unsubscribe", "room": "bench:u", "id": 3},
                                 "unsubscribed"))["id"] == 3
    publisher = await connect_client(token(perms=["publish"], rooms=["bench:*"]))
    await publisher.request({"type": "publish", "room": "bench:u", "data": 1}, "ack")
    with pytest.raises(TimeoutError):
        await member.recv_type("message", timeout=0.2)


async def test_send_to_user_reaches_every_connection(server: RtServer,
                                                     connect_client: Connect) -> None:
    user = str(uuid.uuid4())
    a = await connect_client(token(user=user))
    b = await connect_client(token(user=user))
    other = await connect_client(token())
    await server.node.send_to_user(user, Pong(server_time="user-message"))
    assert (await a.recv_type("pong"))["server_time"] == "user-message"
    assert (await b.recv_type("pong"))["server_time"] == "user-message"
    with pytest.raises(TimeoutError):
        await other.recv_type("never", timeout=0.2)


async def test_server_api_send_to_room_exclude_and_broadcast(server: RtServer,
                                                             connect_client: Connect) -> None:
    a = await connect_client(token(rooms=["bench:*"]))
    b = await connect_client(token(rooms=["bench:*"]))
    for c in (a, b):
        await c.request({"type": "subscribe", "room": "bench:x"}, "subscribed")
    conn_a = next(c for c in server.node.hub.connections.values()
                  if "bench:x" in c.rooms and c.ws.remote_address == a.ws.local_address)
    seq = await server.node.send_to_room("bench:x", b'{"type":"note","v":1}', exclude=conn_a)
    assert seq == 1
    assert await b.recv() == {"type": "note", "v": 1, "seq": 1}
    with pytest.raises(TimeoutError):
        await a.recv(timeout=0.2)  # heartbeats are skipped: nothing else may arrive
    await server.node.broadcast(b'{"type":"announcement"}')
    assert (await a.recv())["type"] == "announcement"
    assert (await b.recv())["type"] == "announcement"
    assert server.node.send_to_connection(conn_a.id, b'{"type":"direct"}')
    assert (await a.recv())["type"] == "direct"
    assert not server.node.send_to_connection("no-such-id", b"{}")


async def test_presence_and_room_events(connect_client: Connect) -> None:
    users = [str(uuid.uuid4()) for _ in range(3)]
    clients = [await connect_client(token(user=u, perms=["quote:read"], rooms=["quote:*"]))
               for u in users]
    await clients[0].request({"type": "subscribe", "room": "quote:q1"}, "subscribed")
    own = await clients[0].recv()  # the joiner receives its own member_joined too
    assert own["type"] == "room_event" and own["user"] == users[0]
    await clients[1].request({"type": "subscribe", "room": "quote:q1"}, "subscribed")
    joined = await clients[0].recv()
    assert joined["type"] == "room_event" and joined["event"] == "member_joined"
    assert joined["user"] == users[1]
    reply = await clients[0].request({"type": "presence", "room": "quote:q1", "id": 1},
                                     "presence")
    assert reply["count"] == 2 and reply["truncated"] is False
    assert {m["user"] for m in reply["members"]} == set(users[:2])
    # presence needs a subscription
    err = await clients[2].request({"type": "presence", "room": "quote:q1"}, "error")
    assert err["code"] == "not_subscribed"
    await clients[1].ws.close()
    left = await clients[0].recv()
    assert left["type"] == "room_event" and left["event"] == "member_left"
    assert left["user"] == users[1]
    reply = await clients[0].request({"type": "presence", "room": "quote:q1"}, "presence")
    assert reply["count"] == 1


async def test_presence_member_limit(make_server: object, connect_client: Connect) -> None:
    from conftest import make_config

    server = await make_server(make_config(limits={"presence_member_limit": 2}))  # type: ignore[operator]
    clients = [await connect_client(token(perms=["quote:read"], rooms=["quote:*"]), srv=server)
               for _ in range(4)]
    for c in clients:
        await c.request({"type": "subscribe", "room": "quote:big"}, "subscribed")
    reply = await clients[0].request({"type": "presence", "room": "quote:big"}, "presence")
    assert reply["count"] == 4 and len(reply["members"]) == 2 and reply["truncated"] is True


async def test_disconnect_cleans_tables(server: RtServer, connect_client: Connect) -> None:
    c = await connect_client(token(rooms=["bench:*"]))
    await c.request({"type": "subscribe", "room": "bench:gone"}, "subscribed")
    assert "bench:gone" in server.node.hub.rooms
    await c.ws.close()
    for _ in range(50):
        if "bench:gone" not in server.node.hub.rooms:
            break
        await asyncio.sleep(0.02)
    assert "bench:gone" not in server.node.hub.rooms
