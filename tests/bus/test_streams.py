"""Stream positions, bounded history, recovery and idempotent publish: the room streams
(unit, explicit clock), the local bus, and the embedded server with real clients."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from rtserver.bus.base import BusUnavailable, StreamPosition
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.local import LocalBus
from rtserver.bus.room_streams import HistorySettings, RoomStreams
from rtserver.metrics import REGISTRY

from .conftest import HISTORY, Recorder, bus_settings, hub_settings

pytestmark = pytest.mark.timeout(30)


def counter_value(name: str, **labels: str) -> float:
    """The value of one sample in the process registry's text exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if want else f"{name} "
    for line in REGISTRY.render({}).splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------- room streams


def test_recover_cases() -> None:
    streams = RoomStreams(dataclasses.replace(HISTORY, history_size=3), "local")
    for i in range(5):
        streams.publish("r", b"m%d" % i, None, now=1.0)
    pos = streams.position("r", 1.0)
    assert pos.seq == 5
    ok = streams.recover("r", StreamPosition(pos.epoch, 3), 1.0)
    assert ok.recovered and ok.reason is None and ok.publications == [(4, b"m3"), (5, b"m4")]
    assert ok.position == pos
    current = streams.recover("r", pos, 1.0)
    assert current.recovered and current.publications == []
    trimmed = streams.recover("r", StreamPosition(pos.epoch, 1), 1.0)
    assert not trimmed.recovered and trimmed.reason == "history_trimmed"
    assert [s for s, _ in trimmed.publications] == [3, 4, 5]
    future = streams.recover("r", StreamPosition(pos.epoch, 9), 1.0)
    assert future.reason == "invalid_position" and future.publications == []
    other = streams.recover("r", StreamPosition("elsewhere.1", 2), 1.0)
    assert other.reason == "epoch_changed" and other.position == pos


def test_history_bounded_by_age_and_bytes() -> None:
    settings = HistorySettings(history_size=100, history_ttl=10.0, history_max_bytes=10,
                               idempotency_window=5.0)
    streams = RoomStreams(settings, "local")
    before = counter_value("rtserver_bus_history_evicted_total", bus="local")
    for i in range(4):
        streams.publish("r", b"abcd", None, now=float(i))  # 4 bytes each, 10 allowed
    assert counter_value("rtserver_bus_history_evicted_total", bus="local") == before + 2
    epoch = streams.position("r", 3.0).epoch
    rec = streams.recover("r", StreamPosition(epoch, 0), 3.0)
    assert [s for s, _ in rec.publications] == [3, 4] and rec.reason == "history_trimmed"
    # Age: at t=12.5 the messages of t=2 are older than history_ttl, the one of t=3 not.
    rec = streams.recover("r", StreamPosition(epoch, 3), 12.5)
    assert rec.recovered and [s for s, _ in rec.publications] == [4]
    rec = streams.recover("r", StreamPosition(epoch, 2), 12.5)
    assert rec.reason == "history_trimmed"


def test_idle_rooms_release_their_state_and_come_back_with_a_new_epoch() -> None:
    streams = RoomStreams(dataclasses.replace(HISTORY, history_ttl=10.0), "local")
    streams.publish("idle", b"x", None, now=0.0)
    streams.publish("watched", b"y", None, now=0.0)
    old_idle = streams.position("idle", 0.0)
    old_watched = streams.position("watched", 0.0)
    streams.sweep(5.0, lambda room: False)
    assert len(streams) == 2  # younger than history_ttl
    streams.sweep(11.0, lambda room: room == "watched")
    assert len(streams) == 1
    assert streams.position("watched", 11.0) == old_watched
    new_idle = streams.position("idle", 11.0)
    assert new_idle.seq == 0 and new_idle.epoch != old_idle.epoch
    assert streams.recover("idle", old_idle, 11.0).reason == "epoch_changed"


def test_publish_key_applies_once_within_the_window() -> None:
    streams = RoomStreams(dataclasses.replace(HISTORY, idempotency_window=5.0), "local")
    first = streams.publish("r", b"a", "k1", now=0.0)
    assert first[2] is True
    again = streams.publish("r", b"a", "k1", now=4.0)
    assert again == (first[0], first[1], False)
    assert streams.position("r", 4.0).seq == 1
    streams.sweep(6.0, lambda room: True)
    later = streams.publish("r", b"a", "k1", now=6.0)
    assert later[2] is True and later[1] == 2


def test_retry_keys_are_kept_only_for_the_retry() -> None:
    streams = RoomStreams(dataclasses.replace(HISTORY, idempotency_window=60.0), "local")
    streams.publish("r", b"a", "generated", now=0.0, remember=1.0)
    streams.publish("r", b"b", "caller", now=0.0)
    streams.sweep(2.0, lambda room: True)
    assert streams.lookup("generated", 2.0) is None
    assert streams.lookup("caller", 2.0) is not None
    assert streams.publish("r", b"a", "generated", now=2.0)[1:] == (3, True)


async def test_local_bus_positions_and_idempotent_publish() -> None:
    bus = LocalBus(HISTORY)
    rec = Recorder()
    await bus.start(rec)
    await bus.add_interest("r")
    start = await bus.position("r")
    p1 = await bus.publish("r", b'{"a":1}', key="user\x00r\x00c1")
    p1b = await bus.publish("r", b'{"a":1}', key="user\x00r\x00c1")
    p2 = await bus.publish("r", b'{"a":2}')
    assert p1 == p1b and p1.epoch == start.epoch and (p1.seq, p2.seq) == (1, 2)
    assert rec.publications == [("r", 1, b'{"a":1}'), ("r", 2, b'{"a":2}')]
    assert rec.epochs == [start.epoch, start.epoch]
    [rec1] = await bus.recover_many([("r", start)])
    assert rec1.recovered and rec1.publications == [(1, b'{"a":1}'), (2, b'{"a":2}')]
    await bus.close()


# --------------------------------------------------------------------------- embedded


Pair = tuple[tuple[EmbeddedBus, Recorder], tuple[EmbeddedBus, Recorder]]


async def test_embedded_idempotent_publish_and_recover_many(pair: Pair) -> None:
    (a, _), (b, rb) = pair
    await b.add_interest("r")
    start = await a.position("r")
    assert start.seq == 0
    p1 = await a.publish("r", b'{"n":1}', key="u\x00r\x00k")
    dup = await b.publish("r", b'{"n":1}', key="u\x00r\x00k")
    p2 = await a.publish("r", b'{"n":2}')
    assert dup == p1 and p1 == StreamPosition(start.epoch, 1) and p2.seq == 2
    await rb.wait_for(lambda: len(rb.publications) == 2)
    await b.position("r")  # a round trip: a duplicate PUB would be in by now
    assert rb.seqs("r") == [1, 2] and rb.epochs == [start.epoch] * 2
    got = await a.recover_many([("r", start), ("r", p2), ("other", StreamPosition("x.1", 3))])
    assert got[0].recovered and got[0].publications == [(1, b'{"n":1}'), (2, b'{"n":2}')]
    assert got[1].recovered and got[1].publications == []
    assert got[2].reason == "epoch_changed" and got[2].position.seq == 0


async def test_dropped_worker_gets_missed_publications_in_order(
        hub: EmbeddedBusServer, pair: Pair) -> None:
    """The server drops worker 0 (as a slow worker); on reconnect it receives what it
    missed from the history, in order, before newer live publications, none twice."""
    (a, ra), (b, _) = pair
    ra.rooms.add("g")
    await a.add_interest("g")
    for i in range(3):
        await b.publish("g", b'{"i":%d}' % i)
    await ra.wait_for(lambda: len(ra.publications) == 3)
    hub._by_worker[0].abort("slow_worker", "test: dropped as a slow worker")
    await ra.wait_for(lambda: any(not s.ok for s in ra.states))
    for i in range(3, 6):
        await b.publish("g", b'{"i":%d}' % i)
    await ra.wait_for(lambda: ra.states[-1].ok)
    await b.publish("g", b'{"i":6}')
    await ra.wait_for(lambda: len(ra.publications) >= 7)
    await a.position("g")
    assert ra.seqs("g") == [1, 2, 3, 4, 5, 6, 7]
    assert [body for _, _, body in ra.publications] == [b'{"i":%d}' % i for i in range(7)]
    assert ra.gaps == []


async def test_gap_beyond_the_history_is_reported(runtime_dir: str) -> None:
    settings = dataclasses.replace(hub_settings(runtime_dir),
                                   history=dataclasses.replace(HISTORY, history_size=2))
    hub = EmbeddedBusServer(settings)
    await hub.start()
    a, b = EmbeddedBus(bus_settings(runtime_dir, 0)), EmbeddedBus(bus_settings(runtime_dir, 1))
    ra = Recorder()
    await a.start(ra)
    await b.start(Recorder())
    try:
        ra.rooms.add("g")
        await a.add_interest("g")
        await b.publish("g", b'{"i":1}')
        await ra.wait_for(lambda: ra.publications)
        hub._by_worker[0].abort("slow_worker", "test")
        await ra.wait_for(lambda: any(not s.ok for s in ra.states))
        for i in range(2, 7):
            last = await b.publish("g", b'{"i":%d}' % i)
        await ra.wait_for(lambda: ra.states[-1].ok and len(ra.publications) == 3)
        assert ra.gaps == [("g", last.epoch, 2, 4, "history_trimmed")]
        assert ra.seqs("g") == [1, 5, 6]
    finally:
        await a.close()
        await b.close()
        await hub.close()


async def test_server_restart_is_an_epoch_change(runtime_dir: str) -> None:
    hub = EmbeddedBusServer(hub_settings(runtime_dir))
    await hub.start()
    a = EmbeddedBus(bus_settings(runtime_dir, 0))
    ra = Recorder()
    await a.start(ra)
    try:
        ra.rooms.add("g")
        await a.add_interest("g")
        old = await a.publish("g", b'{"i":1}')
        await ra.wait_for(lambda: ra.publications)
        await hub.close()
        await ra.wait_for(lambda: any(not s.ok for s in ra.states))
        hub = EmbeddedBusServer(hub_settings(runtime_dir))
        await hub.start()
        await ra.wait_for(lambda: ra.states[-1].ok and ra.gaps)
        [(room, epoch, first, to, reason)] = ra.gaps
        assert (room, first, to, reason) == ("g", 1, 0, "epoch_changed")
        assert epoch != old.epoch
        new = await a.publish("g", b'{"i":2}')
        assert new == StreamPosition(epoch, 1)
        await ra.wait_for(lambda: len(ra.publications) == 2)
        assert ra.epochs == [old.epoch, epoch]
    finally:
        await a.close()
        await hub.close()


async def test_publish_applied_before_a_loss_is_reported_done_once(
        hub: EmbeddedBusServer, pair: Pair) -> None:
    """The hub sequences a publish and the connection breaks before its ACK leaves: the
    retry after the reconnect (same generated key) answers the original position."""
    (a, ra), (b, rb) = pair
    ra.rooms.add("r")
    await a.add_interest("r")
    ra.subscribed["r"] = await a.position("r")
    await b.add_interest("r")
    original = hub._publish
    dropped: list[Any] = []

    def publish_then_drop(conn: Any, frame: Any) -> None:
        original(conn, frame)
        if not dropped:
            dropped.append(frame)
            conn.abort("test", "drop the connection before the ACK leaves")

    hub._publish = publish_then_drop  # type: ignore[method-assign]
    pos = await a.publish("r", b'{"once":1}')
    assert dropped and pos.seq == 1
    await rb.wait_for(lambda: rb.publications)
    await ra.wait_for(lambda: ra.publications)
    await b.position("r")
    await a.position("r")
    assert rb.publications == [("r", 1, b'{"once":1}')]
    assert ra.publications == [("r", 1, b'{"once":1}')]  # from the recovery, once
    assert (await a.position("r")).seq == 1


async def test_publish_timed_out_is_not_applied_later(hub: EmbeddedBusServer,
                                                      runtime_dir: str) -> None:
    settings = dataclasses.replace(bus_settings(runtime_dir, 0), request_timeout=0.3)
    a = EmbeddedBus(settings)
    await a.start(Recorder())
    try:
        start = await a.position("r")
        transport = hub._by_worker[0].transport
        assert transport is not None
        transport.pause_reading()
        expired_before = counter_value("rtserver_bus_hub_publish_expired_total")
        with pytest.raises(BusUnavailable, match="not applied later"):
            await a.publish("r", b'{"late":1}')
        transport.resume_reading()
        # Ordered behind the publish on the same connection: the hub has handled it.
        assert await a.position("r") == start
        assert counter_value("rtserver_bus_hub_publish_expired_total") == expired_before + 1
    finally:
        await a.close()


async def test_publish_while_down_fails_at_once(runtime_dir: str) -> None:
    hub = EmbeddedBusServer(hub_settings(runtime_dir))
    await hub.start()
    rec = Recorder()
    bus = EmbeddedBus(bus_settings(runtime_dir, 0))
    await bus.start(rec)
    try:
        await hub.close()
        await rec.wait_for(lambda: any(not s.ok for s in rec.states))
        with pytest.raises(BusUnavailable, match="Required action"):
            await asyncio.wait_for(bus.publish("r", b"{}"), 1.0)
    finally:
        await bus.close()
