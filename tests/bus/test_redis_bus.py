"""Redis bus against real Redis: 127.0.0.1:6379 (random key prefix) and a private redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from rtserver.bus.base import BusUnavailable, PresenceMember, StreamPosition
from rtserver.bus.redis_pubsub import Subscriber

from .conftest import SHARED_URL, PrivateRedis

pytestmark = pytest.mark.timeout(40)


async def test_two_nodes_concurrent_publishers_consecutive_seq(make_bus) -> None:  # type: ignore[no-untyped-def]
    a, ra = await make_bus(0)
    b, rb = await make_bus(1)
    await a.add_interest("r")
    await b.add_interest("r")
    body = b'{"type":"message","room":"r","data":{"k":1}}'
    seqs = await asyncio.gather(*[a.publish("r", body) for _ in range(150)],
                                *[b.publish("r", body) for _ in range(150)])
    assert sorted(p.seq for p in seqs) == list(range(1, 301))
    assert len({p.epoch for p in seqs}) == 1
    await ra.wait_for(lambda: len(ra.publications) == 300)
    assert ra.epochs == [seqs[0].epoch] * 300
    await rb.wait_for(lambda: len(rb.publications) == 300)
    assert ra.seqs("r") == list(range(1, 301))
    assert rb.seqs("r") == list(range(1, 301))
    assert all(p[2] == body for p in ra.publications)
    assert await a.position("r") == StreamPosition(epoch=seqs[0].epoch, seq=300)
    history = await b.history("r", 3)
    assert [seq for seq, _ in history] == [298, 299, 300] and history[0][1] == body


async def test_interest_and_user_routing(make_bus) -> None:  # type: ignore[no-untyped-def]
    a, ra = await make_bus(0)
    b, rb = await make_bus(1)
    await a.add_interest("ra")
    await b.add_user_interest("u1")
    await b.publish("ra", b'{"n":1}')
    await a.emit_room_event("ra", b'{"type":"join"}')
    await a.send_to_user("u1", b'{"type":"notice"}')
    await ra.wait_for(lambda: ra.publications and ra.events)
    await rb.wait_for(lambda: rb.user_messages)
    # A round trip through b's own subscription: anything routed to b is in by now.
    await b.add_interest("probe")
    await a.publish("probe", b'{"p":1}')
    await rb.wait_for(lambda: rb.publications)
    assert rb.publications == [("probe", 1, b'{"p":1}')]
    assert rb.events == []
    assert ra.user_messages == []
    assert ra.publications == [("ra", 1, b'{"n":1}')]
    assert rb.user_messages == [("u1", b'{"type":"notice"}')]
    await a.remove_interest("ra")
    await b.publish("ra", b'{"n":2}')
    await b.publish("probe", b'{"p":2}')
    await rb.wait_for(lambda: len(rb.publications) == 2)
    assert len(ra.publications) == 1


async def test_presence_union_and_leave(make_bus) -> None:  # type: ignore[no-untyped-def]
    a, _ = await make_bus(0)
    b, rb = await make_bus(1)
    await a.presence_join("p", PresenceMember(user="u1", connection_id="c1"))
    for cid in ("c2", "c3"):
        # The node records its member (the handler's snapshot) before calling the bus.
        rb.presence.add(("p", PresenceMember(user="u2", connection_id=cid)))
        await b.presence_join("p", PresenceMember(user="u2", connection_id=cid))
    snap = await a.presence("p", 10)
    assert snap.count == 3
    assert {(m.user, m.connection_id) for m in snap.members} == {
        ("u1", "c1"), ("u2", "c2"), ("u2", "c3")}
    assert len((await a.presence("p", 2)).members) == 2
    rb.presence.discard(("p", PresenceMember(user="u2", connection_id="c2")))
    await b.presence_leave("p", PresenceMember(user="u2", connection_id="c2"))
    assert (await a.presence("p", 10)).count == 2
    await b.close()  # a clean close removes its entries
    assert (await a.presence("p", 10)).members == [PresenceMember(user="u1", connection_id="c1")]


CRASHING_NODE = """
import asyncio, sys
from rtserver.bus.base import InterestSnapshot, PresenceMember
from rtserver.backoff import BackoffPolicy
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings
class H:
    def on_publication(self, *a): pass
    def on_room_event(self, *a): pass
    def on_user_message(self, *a): pass
    def on_bus_state(self, *a): pass
    def on_stream_gap(self, *a): pass
    def interest_snapshot(self):
        return InterestSnapshot(rooms=[], users=[],
                                presence=[("p", PresenceMember(user="ghost", connection_id="g1"))])
async def main():
    bus = RedisBus(RedisBusSettings(url=sys.argv[1], key_prefix=sys.argv[2], node_id="doomed",
        history_size=10, history_ttl=300.0, history_max_bytes=1 << 20,
        idempotency_window=60.0, presence_ttl=1.0, presence_refresh_interval=0.3,
        request_timeout=2.0, connect_timeout=1.0, max_connections=4, publish_batch_max=8,
        reconnect=BackoffPolicy(0.05, 0.3, 0.2)))
    await bus.start(H())
    await bus.presence_join("p", PresenceMember(user="ghost", connection_id="g1"))
    print("joined", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_presence_of_a_dead_node_expires(make_bus, prefix: str) -> None:  # type: ignore[no-untyped-def]
    a, _ = await make_bus(0)
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_NODE, SHARED_URL, prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == b"joined"
        # The live node keeps refreshing: wait until its entry's expiry (the zset score)
        # has been pushed forward twice, i.e. past the expiry it had when it joined, rather
        # than sleeping for longer than the TTL (a stalled child would then miss it).
        raw = aioredis.from_url(SHARED_URL)
        try:
            expiries: list[float] = []
            async with asyncio.timeout(10):
                while len(set(expiries)) < 3:
                    scores = await raw.zrange(f"{prefix}:pres:p", 0, -1, withscores=True)
                    assert len(scores) == 1, scores
                    if not expiries or scores[0][1] > expiries[-1]:
                        expiries.append(scores[0][1])
                    await asyncio.sleep(0.05)
        finally:
            await raw.aclose()
        assert expiries == sorted(expiries)
        assert (await a.presence("p", 10)).count == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        async with asyncio.timeout(10):  # expires within presence_ttl (1 s) of the kill
            while (await a.presence("p", 10)).count != 0:
                await asyncio.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_redis_restart_degrades_then_recovers(  # type: ignore[no-untyped-def]
        private_redis: PrivateRedis, make_bus) -> None:
    bus, rec = await make_bus(0, url=private_redis.url)
    rec.rooms.add("room")
    await bus.add_interest("room")
    rec.users.add("user")
    await bus.add_user_interest("user")
    rec.presence.add(("room", PresenceMember(user="user", connection_id="c")))
    await bus.presence_join("room", PresenceMember(user="user", connection_id="c"))
    for _ in range(3):
        await bus.publish("room", b'{"x":1}')
    await rec.wait_for(lambda: len(rec.publications) == 3)
    assert bus.health().ok

    private_redis.kill()
    await rec.wait_for(lambda: any(not s.ok for s in rec.states))
    health = bus.health()
    assert not health.ok and "redis unavailable" in (health.reason or "")
    with pytest.raises(BusUnavailable, match="Required action"):
        await bus.publish("room", b'{"x":2}')
    with pytest.raises(BusUnavailable):
        await bus.presence("room", 10)
    rec.rooms.add("room2")
    await bus.add_interest("room2")  # in the handler's snapshot: subscribed on recovery

    private_redis.start()  # same port, empty dataset (no persistence)
    await rec.wait_for(lambda: rec.states[-1].ok)
    assert bus.health().ok
    # Redis lost its data; the room's counter was re-seeded from what this node delivered.
    pos = await bus.publish("room", b'{"x":3}')
    assert pos.seq == 4
    await bus.publish("room2", b'{"y":1}')
    await bus.send_to_user("user", b'{"u":1}')
    await rec.wait_for(lambda: len(rec.publications) == 5 and rec.user_messages)
    assert rec.seqs("room") == [1, 2, 3, 4]
    assert rec.seqs("room2") == [1]
    assert (await bus.presence("room", 10)).count == 1


async def test_password_protected_redis(make_bus) -> None:  # type: ignore[no-untyped-def]
    server = PrivateRedis(password="s3cret-pw")
    server.start()
    try:
        bus, rec = await make_bus(0, url=server.url)
        await bus.add_interest("room")
        await bus.publish("room", b'{"a":1}')
        await rec.wait_for(lambda: rec.publications)
        assert rec.publications == [("room", 1, b'{"a":1}')]
        await bus.close()
    finally:
        server.kill()


class _StubBus:
    """Receives what the subscriber protocol parses (a test double for RedisBus)."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.confirmed: list[bytes] = []

    def on_message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))

    def on_subscribed(self, channel: bytes) -> None:
        self.confirmed.append(channel)


def test_subscriber_parses_split_frames() -> None:
    stream = (b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
              b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$13\r\nP1\nn\n{\"a\":\r\n}\r\n"
              b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n")
    for step in (1, 2, 3, 7, len(stream)):
        stub = _StubBus()
        sub = Subscriber(stub)  # type: ignore[arg-type]
        for i in range(0, len(stream), step):
            sub.data_received(stream[i:i + step])
        assert stub.confirmed == [b"ch"]
        assert stub.messages == [(b"ch", b'P1\nn\n{"a":\r\n}'), (b"ch", b"")]
        assert sub.buf == bytearray()


def test_subscriber_rejects_a_corrupt_stream() -> None:
    stub = _StubBus()
    sub = Subscriber(stub)  # type: ignore[arg-type]
    sub.data_received(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nabcd\r\n")
    assert stub.messages == []
