"""Redis bus stream positions, bounded history, recovery and idempotent publish, against
real Redis (127.0.0.1:6379 with a random key prefix, or a private redis-server)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import BusUnavailable, StreamPosition

from .conftest import SHARED_URL, PrivateRedis
from .test_streams import counter_value

pytestmark = pytest.mark.timeout(40)

SLOW_RECONNECT = BackoffPolicy(initial_delay=0.5, max_delay=1.0, jitter=0.0)


async def test_idempotent_publish_and_recover_many(make_bus: Any) -> None:
    a, _ = await make_bus(0)
    b, rb = await make_bus(1)
    await b.add_interest("r")
    start = await a.position("r")
    assert start.seq == 0 and start.epoch
    p1 = await a.publish("r", b'{"n":1}', key="u\x00r\x00k1")
    dup = await b.publish("r", b'{"n":1}', key="u\x00r\x00k1")
    p2 = await a.publish("r", b'{"n":2}')
    assert dup == p1 == StreamPosition(start.epoch, 1) and p2 == StreamPosition(start.epoch, 2)
    await rb.wait_for(lambda: len(rb.publications) == 2)
    # A round trip through b's own subscription: a duplicate would be in by now.
    await b.add_interest("probe")
    await a.publish("probe", b"{}")
    await rb.wait_for(lambda: len(rb.publications) == 3)
    assert rb.seqs("r") == [1, 2] and rb.epochs[:2] == [start.epoch] * 2
    got = await a.recover_many([("r", start), ("r", p2), ("r", StreamPosition(start.epoch, 7)),
                                ("r", StreamPosition("gone", 1))])
    assert got[0].recovered and got[0].publications == [(1, b'{"n":1}'), (2, b'{"n":2}')]
    assert got[1].recovered and got[1].publications == [] and got[1].position == p2
    assert got[2].reason == "invalid_position"
    assert got[3].reason == "epoch_changed" and got[3].position == p2
    assert await a.history("r", 10) == [(1, b'{"n":1}'), (2, b'{"n":2}')]


async def test_history_bounded_by_size_and_bytes(make_bus: Any) -> None:
    a, _ = await make_bus(0, history_size=3, history_max_bytes=10)
    before = counter_value("rtserver_bus_history_evicted_total", bus="redis")
    for _ in range(5):
        last = await a.publish("r", b"abcd")  # 4 bytes each: 2 fit in 10 bytes
    assert counter_value("rtserver_bus_history_evicted_total", bus="redis") == before + 3
    rec = await a.recover("r", StreamPosition(last.epoch, 1))
    assert rec.reason == "history_trimmed" and [s for s, _ in rec.publications] == [4, 5]
    rec = await a.recover("r", StreamPosition(last.epoch, 3))
    assert rec.recovered and [s for s, _ in rec.publications] == [4, 5]


async def test_unwatched_room_expires_with_a_new_epoch(make_bus: Any, prefix: str) -> None:
    a, _ = await make_bus(0, history_ttl=12.0, refresh=10.0, presence_ttl=30.0)
    old = await a.publish("idle", b"{}")
    client = aioredis.from_url(SHARED_URL)
    try:
        ttl = await client.pttl(f"{prefix}:seq:idle")
        assert 0 < ttl <= 12000
        # Expire it now instead of waiting history_ttl (what the TTL does later).
        for key in ("seq", "ep", "hist", "hbytes"):
            await client.pexpire(f"{prefix}:{key}:idle", 1)
        async with asyncio.timeout(5):
            while await client.exists(f"{prefix}:ep:idle"):
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()
    new = await a.position("idle")
    assert new.seq == 0 and new.epoch != old.epoch
    assert (await a.recover("idle", old)).reason == "epoch_changed"


async def test_subscriber_loss_recovers_missed_publications_in_order(make_bus: Any) -> None:
    a, ra = await make_bus(0, reconnect=SLOW_RECONNECT)
    b, _ = await make_bus(1)
    ra.rooms.add("g")
    await a.add_interest("g")
    ra.subscribed["g"] = await a.position("g")
    await b.publish("g", b'{"i":1}')
    await ra.wait_for(lambda: ra.publications)
    assert a._sub is not None
    a._sub.close()  # the pub/sub connection breaks; a reconnects after 0.5 s
    await ra.wait_for(lambda: any(not s.ok for s in ra.states))
    for i in range(2, 5):
        await b.publish("g", b'{"i":%d}' % i)
    await ra.wait_for(lambda: ra.states[-1].ok and len(ra.publications) == 4)
    last = await b.publish("g", b'{"i":5}')
    await ra.wait_for(lambda: len(ra.publications) == 5)
    assert ra.seqs("g") == [1, 2, 3, 4, 5] and ra.gaps == []
    assert [body for _, _, body in ra.publications] == [b'{"i":%d}' % i for i in range(1, 6)]
    assert ra.epochs == [last.epoch] * 5


async def test_redis_restart_is_an_epoch_change_and_a_held_publish_completes(
        private_redis: PrivateRedis, make_bus: Any) -> None:
    bus, rec = await make_bus(0, url=private_redis.url)
    rec.rooms.add("g")
    await bus.add_interest("g")
    first = await bus.publish("g", b'{"i":1}')
    await bus.publish("g", b'{"i":2}')
    await rec.wait_for(lambda: len(rec.publications) == 2)
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)  # frozen: the bus cannot notice yet
    held = asyncio.ensure_future(bus.publish("g", b'{"i":3}'))
    await asyncio.sleep(0)  # one loop step: the publish is accepted (the bus is still up)
    assert not held.done() and bus.health().ok
    private_redis.kill()
    # The publish fails on the wire, is held, and goes again once Redis is back (within
    # request_timeout), instead of failing.
    await rec.wait_for(lambda: any(not s.ok for s in rec.states))
    private_redis.start()
    pos = await asyncio.wait_for(held, 10)
    await rec.wait_for(lambda: rec.states[-1].ok and rec.gaps and len(rec.publications) == 3)
    [(room, epoch, from_seq, to_seq, reason)] = rec.gaps
    # A new lineage; its counter was re-seeded from what this node delivered.
    assert (room, from_seq, to_seq, reason) == ("g", 1, 2, "epoch_changed")
    assert epoch != first.epoch and pos == StreamPosition(epoch, 3)
    assert rec.seqs("g") == [1, 2, 3] and rec.epochs[2] == epoch


async def test_publish_past_its_deadline_is_not_applied_later(private_redis: PrivateRedis,
                                                              make_bus: Any,
                                                              prefix: str) -> None:
    bus, _ = await make_bus(0, url=private_redis.url, request_timeout=0.5,
                            idempotency_window=5.0, refresh=0.4, presence_ttl=1.0)
    admin = aioredis.from_url(private_redis.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        with pytest.raises(BusUnavailable, match="not applied"):
            await bus.publish("late", b'{"x":1}')
        await admin.execute_command("CLIENT", "UNPAUSE")
        async with asyncio.timeout(10):
            while not bus.health().ok:
                await asyncio.sleep(0.05)
        assert (await bus.position("late")).seq == 0
        assert await admin.get(f"{prefix}:seq:late") is None
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
