"""Stream positions and recovery over the wire: real servers, real websockets clients.

``subscribed`` carries ``(epoch, seq)``; a ``subscribe`` with ``since`` gets
exactly the missed messages before any live one (or ``recovered: false`` with
the reason and an action); many rooms resubscribe in one frame; a publish
``key`` is applied once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from conftest import Client, ServerProcess, make_config, token
from rtserver.server import RtServer

pytestmark = pytest.mark.timeout(60)

PERMS = ["publish"]
ROOMS = ["bench:*"]


def _room() -> str:
    return f"bench:rec-{uuid.uuid4().hex[:10]}"


async def _subscribe(c: Client, room: str, since: dict[str, Any] | None = None,
                     msg_id: int = 1) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "room": room, "id": msg_id}
    if since is not None:
        frame["since"] = since
    return await c.request(frame, "subscribed")


async def _publish(c: Client, room: str, n: int, start: int = 0) -> list[int]:
    """Publish ``n`` messages ``{"i": start..}``; their seqs from the acks."""
    seqs = []
    for i in range(start, start + n):
        await c.send({"type": "publish", "room": room, "data": {"i": i}, "id": f"p{i}"})
        while True:
            msg = await c.recv()
            if msg["type"] == "ack" and msg["id"] == f"p{i}":
                seqs.append(msg["seq"])
                break
            assert msg["type"] in ("message",), msg
    return seqs


async def test_missed_messages_are_replayed_before_live_ones(server: RtServer,
                                                             connect_client: Any) -> None:
    room = _room()
    tok = token(perms=PERMS, rooms=ROOMS)
    away = await connect_client(tok)
    sub = await _subscribe(away, room)
    assert isinstance(sub["epoch"], str) and sub["epoch"] and sub["seq"] == 0
    assert "recovered" not in sub
    await away.ws.close()

    publisher = await connect_client(tok)
    seqs = await _publish(publisher, room, 10)
    assert seqs == list(range(1, 11))

    back = await connect_client(tok)
    since = {"epoch": sub["epoch"], "seq": sub["seq"]}
    got = await _subscribe(back, room, since)
    assert got["recovered"] is True and got["replayed"] == 10
    assert got["seq"] == 10 and got["epoch"] == sub["epoch"]
    replayed = [await back.recv_type("message") for _ in range(10)]
    assert [m["seq"] for m in replayed] == list(range(1, 11))
    assert [m["data"]["i"] for m in replayed] == list(range(10))
    await _publish(publisher, room, 1, start=10)
    live = await back.recv_type("message")
    assert live["seq"] == 11 and live["data"] == {"i": 10}


async def test_recovery_refused_with_reason_and_action(make_server: Any,
                                                       connect_client: Any) -> None:
    srv = await make_server(make_config(bus={"history_size": 3}))
    room = _room()
    tok = token(perms=PERMS, rooms=ROOMS)
    c = await connect_client(tok, srv=srv)
    sub = await _subscribe(c, room)
    await _publish(c, room, 6)
    cases = [
        ({"epoch": "not-this-epoch", "seq": 0}, "epoch_changed"),
        ({"epoch": sub["epoch"], "seq": 0}, "history_trimmed"),
        ({"epoch": sub["epoch"], "seq": 50}, "invalid_position"),
    ]
    current = 6
    for n, (since, reason) in enumerate(cases):
        other = await connect_client(tok, srv=srv)
        got = await _subscribe(other, room, since)
        assert got["recovered"] is False and got["reason"] == reason, got
        assert got["action"].startswith("Required action: reload"), got
        assert got["seq"] == current and "replayed" not in got
        # Nothing is replayed: the next message is the next live one.
        await _publish(c, room, 1, start=100 + n)
        current += 1
        assert (await other.recv_type("message"))["seq"] == current
        await other.ws.close()


async def test_many_rooms_in_one_frame(server: RtServer, connect_client: Any) -> None:
    tok = token(perms=PERMS, rooms=ROOMS)
    rooms = [_room() for _ in range(3)]
    first = await connect_client(tok)
    subs = [await _subscribe(first, r, msg_id=i) for i, r in enumerate(rooms)]
    await first.ws.close()
    publisher = await connect_client(tok)
    await _publish(publisher, rooms[0], 2)
    await _publish(publisher, rooms[2], 1)

    back = await connect_client(tok)
    await back.send({"type": "subscribe", "id": "resub", "rooms": [
        {"room": rooms[0], "since": {"epoch": subs[0]["epoch"], "seq": 0}},
        {"room": rooms[1], "since": {"epoch": subs[1]["epoch"], "seq": 0}},
        {"room": rooms[2]},
        {"room": "forbidden:nope"},
    ]})
    frames = []
    while len([f for f in frames if f["type"] in ("subscribed", "error")]) < 4:
        frames.append(await back.recv())
    by_type: dict[str, list[dict[str, Any]]] = {}
    for f in frames:
        by_type.setdefault(f["type"], []).append(f)
    assert all(f["id"] == "resub" for f in by_type["subscribed"] + by_type["error"])
    [err] = by_type["error"]
    assert err["room"] == "forbidden:nope"
    subscribed = {f["room"]: f for f in by_type["subscribed"]}
    assert subscribed[rooms[0]]["recovered"] is True and subscribed[rooms[0]]["replayed"] == 2
    assert subscribed[rooms[1]]["recovered"] is True and subscribed[rooms[1]]["replayed"] == 0
    assert "recovered" not in subscribed[rooms[2]] and subscribed[rooms[2]]["seq"] == 1
    # The replayed messages of room 0 came right after its subscribed, in order.
    i = frames.index(subscribed[rooms[0]])
    assert [(f["room"], f["seq"]) for f in frames[i + 1:i + 3]] == [(rooms[0], 1), (rooms[0], 2)]
    # Neither room nor rooms: an explicit error.
    err = await back.request({"type": "subscribe", "id": 9}, "error")
    assert err["code"] == "invalid_field"


async def test_publish_key_is_applied_once(server: RtServer, connect_client: Any) -> None:
    room = _room()
    tok = token(perms=PERMS, rooms=ROOMS)
    member = await connect_client(tok)
    await _subscribe(member, room)
    pub = await connect_client(tok)
    acks = []
    for attempt in range(3):
        acks.append(await pub.request({"type": "publish", "room": room, "data": {"n": 1},
                                       "key": "order-17", "id": attempt}, "ack"))
    assert {a["seq"] for a in acks} == {1}
    other = await pub.request({"type": "publish", "room": room, "data": {"n": 2},
                               "key": "order-18", "id": 9}, "ack")
    assert other["seq"] == 2
    got = [await member.recv_type("message") for _ in range(2)]
    assert [m["seq"] for m in got] == [1, 2] and [m["data"]["n"] for m in got] == [1, 2]
    too_long = await pub.request({"type": "publish", "room": room, "data": 1, "key": "k" * 129,
                                  "id": 10}, "error")
    assert too_long["code"] == "invalid_field"


async def test_replay_live_boundary_while_publishing(make_server: Any,
                                                     connect_client: Any) -> None:
    """A publisher runs while a client resubscribes with since: gap-free, no duplicate."""
    srv = await make_server(make_config(bus={"history_size": 1000}, limits={
        "rate_limit_per_second": 1e6, "rate_limit_burst": 10**6}))
    room = _room()
    tok = token(perms=PERMS, rooms=ROOMS)

    async def connect_client_here(t: str) -> Client:
        return await connect_client(t, srv=srv)

    first = await connect_client_here(tok)
    sub = await _subscribe(first, room)
    await first.ws.close()
    publisher = await connect_client_here(tok)
    total = 300

    async def publish_all() -> None:
        for i in range(total):
            await publisher.send({"type": "publish", "room": room, "data": i})
            if i % 20 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(publish_all())
    await asyncio.sleep(0.01)
    back = await connect_client_here(tok)
    got = await _subscribe(back, room, {"epoch": sub["epoch"], "seq": 0})
    assert got["recovered"] is True
    await task
    seqs = []
    while len(seqs) < total:
        seqs.append((await back.recv_type("message"))["seq"])
    assert seqs == list(range(1, total + 1))


async def test_recovery_across_two_workers() -> None:
    """The embedded bus: a client recovers what was published on any worker."""
    proc = ServerProcess(["--workers", "2"], listening_lines=2)
    try:
        port = await asyncio.to_thread(proc.wait_listening)
        from websockets.asyncio.client import connect

        async def client() -> Client:
            c = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={tok}"))
            await c.recv()
            await c.recv()
            return c

        tok = token(perms=PERMS, rooms=ROOMS)
        room = _room()
        first = await client()
        sub = await _subscribe(first, room)
        await first.ws.close()
        pubs = [await client() for _ in range(4)]  # spread over both workers
        for n, p in enumerate(pubs):
            await _publish(p, room, 5, start=n * 5)
        back = await client()
        got = await _subscribe(back, room, {"epoch": sub["epoch"], "seq": sub["seq"]})
        assert got["recovered"] is True and got["replayed"] == 20
        seqs = [(await back.recv_type("message"))["seq"] for _ in range(20)]
        assert seqs == list(range(1, 21))
        for c in (*pubs, back):
            await c.ws.close()
    finally:
        proc.stop()
