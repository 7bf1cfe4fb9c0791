"""Embedded bus: a real hub on a Unix socket and real worker clients in one loop."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest

from rtserver.bus.base import BusUnavailable, PresenceMember, StreamPosition, with_seq
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.metrics_text import merge_metrics_texts
from rtserver.bus.wire import K_ACK, K_HELLO, K_PUB, FrameReader, encode

from .conftest import Recorder, bus_settings, hub_settings

pytestmark = pytest.mark.timeout(30)

Pair = tuple[tuple[EmbeddedBus, Recorder], tuple[EmbeddedBus, Recorder]]


def test_frames_round_trip_in_pieces() -> None:
    frames = b"".join(encode(K_PUB, 7, i, f"room{i}", b'{"a":%d}' % i) for i in range(50))
    reader = FrameReader()
    got = []
    for i in range(0, len(frames), 7):
        got.extend(reader.feed(frames[i:i + 7]))
    assert [(f.kind, f.req, f.seq, f.key, f.payload) for f in got] == [
        (K_PUB, 7, i, f"room{i}", b'{"a":%d}' % i) for i in range(50)]
    assert reader.pending() == 0


async def test_concurrent_publishers_see_consecutive_seq(pair: Pair) -> None:
    (a, ra), (b, rb) = pair
    await a.add_interest("r")
    await b.add_interest("r")
    body = b'{"type":"message","room":"r","data":1}'
    results = await asyncio.gather(*[a.publish("r", body) for _ in range(200)],
                                   *[b.publish("r", body) for _ in range(200)])
    assert sorted(p.seq for p in results) == list(range(1, 401))
    assert len({p.epoch for p in results}) == 1
    await ra.wait_for(lambda: len(ra.publications) == 400)
    await rb.wait_for(lambda: len(rb.publications) == 400)
    assert ra.seqs("r") == list(range(1, 401))
    assert rb.seqs("r") == list(range(1, 401))
    assert with_seq(ra.publications[0][2], 1) == body[:-1] + b',"seq":1}'
    assert await b.position("r") == StreamPosition(epoch=results[0].epoch, seq=400)


async def test_publisher_sees_its_publication_before_ack(pair: Pair) -> None:
    (a, ra), _ = pair
    await a.add_interest("own")
    pos = await a.publish("own", b'{"x":1}')
    assert ra.publications == [("own", pos.seq, b'{"x":1}')]
    assert ra.epochs == [pos.epoch]


async def test_interest_routing(pair: Pair) -> None:
    (a, ra), (b, rb) = pair
    await a.add_interest("only-a")
    await a.publish("only-a", b'{"n":1}')
    await b.publish("only-a", b'{"n":2}')
    await a.emit_room_event("only-a", b'{"type":"join"}')
    await ra.wait_for(lambda: len(ra.publications) == 2 and len(ra.events) == 1)
    # b published into the room but has no interest: it receives nothing.
    await b.position("only-a")  # a round trip: anything routed to b is in by now
    assert rb.publications == [] and rb.events == []
    await a.remove_interest("only-a")
    await b.add_interest("only-a")
    await a.publish("only-a", b'{"n":3}')
    await rb.wait_for(lambda: len(rb.publications) == 1)
    await a.position("only-a")
    assert [s for _, s, _ in ra.publications] == [1, 2]
    assert rb.publications == [("only-a", 3, b'{"n":3}')]


async def test_add_interest_answers_the_position_and_later_publications_follow(
        pair: Pair) -> None:
    (a, _), (b, rb) = pair
    first = await a.publish("ordered", b'{"n":1}')
    await a.publish("ordered", b'{"n":2}')
    assert b.ordered_positions("ordered")
    pos = await b.add_interest("ordered")
    # the position when the interest took effect: the room's position, in its epoch
    assert pos == await b.position("ordered") == StreamPosition(epoch=first.epoch, seq=2)
    await a.publish("ordered", b'{"n":3}')
    await rb.wait_for(lambda: len(rb.publications) == 1)
    # nothing from before the interest, everything after it, in order
    assert rb.publications == [("ordered", 3, b'{"n":3}')]
    # a room nobody published into starts at 0 (in its own stream's epoch)
    fresh = await a.add_interest("fresh")
    assert fresh is not None and fresh.seq == 0 and fresh == await a.position("fresh")


async def test_user_routing(pair: Pair) -> None:
    (a, ra), (b, rb) = pair
    await b.add_user_interest("u1")
    await a.send_to_user("u1", b'{"type":"notice"}')
    await a.send_to_user("nobody", b'{"type":"lost"}')
    await rb.wait_for(lambda: len(rb.user_messages) == 1)
    await a.position("x")
    assert rb.user_messages == [("u1", b'{"type":"notice"}')]
    assert ra.user_messages == []
    await b.remove_user_interest("u1")
    await a.send_to_user("u1", b'{"type":"again"}')
    await b.position("x")
    assert len(rb.user_messages) == 1


async def test_presence_union_and_cleanup_on_disconnect(hub: EmbeddedBusServer,
                                                        runtime_dir: str) -> None:
    a = EmbeddedBus(bus_settings(runtime_dir, 0))
    b = EmbeddedBus(bus_settings(runtime_dir, 1))
    await a.start(Recorder())
    await b.start(Recorder())
    try:
        await a.presence_join("p", PresenceMember(user="u1", connection_id="c1"))
        await a.presence_join("p", PresenceMember(user="u2", connection_id="c2"))
        await b.presence_join("p", PresenceMember(user="u3", connection_id="c3"))
        snap = await a.presence("p", 10)
        assert snap.count == 3
        assert {m.connection_id for m in snap.members} == {"c1", "c2", "c3"}
        limited = await b.presence("p", 1)
        assert limited.count == 3 and len(limited.members) == 1
        await a.presence_leave("p", PresenceMember(user="u1", connection_id="c1"))
        assert (await b.presence("p", 10)).count == 2
        await a.close()
        # The hub removes everything of a worker whose connection closed.
        for _ in range(100):
            snap = await b.presence("p", 10)
            if snap.count == 1:
                break
            await asyncio.sleep(0.01)
        assert snap.members == [PresenceMember(user="u3", connection_id="c3")]
    finally:
        await b.close()


async def test_hub_loss_degrades_and_recovery_redeclares(runtime_dir: str) -> None:
    hub = EmbeddedBusServer(hub_settings(runtime_dir))
    await hub.start()
    rec = Recorder()
    bus = EmbeddedBus(bus_settings(runtime_dir, 0))
    await bus.start(rec)
    try:
        rec.rooms.add("room")
        await bus.add_interest("room")
        rec.users.add("user")
        await bus.add_user_interest("user")
        rec.presence.add(("room", PresenceMember(user="user", connection_id="c")))
        await bus.presence_join("room", PresenceMember(user="user", connection_id="c"))
        assert bus.health().ok
        await hub.close()
        await rec.wait_for(lambda: any(not s.ok for s in rec.states))
        assert not bus.health().ok and "hub connection lost" in (bus.health().reason or "")
        # no position without the hub: a joiner's is asked, and the bus says it is down
        assert not bus.ordered_positions("room")
        with pytest.raises(BusUnavailable, match="Required action"):
            await bus.publish("room", b'{"a":1}')
        # A declaration while down returns; the reconnect re-declares the handler's
        # snapshot, which has it (the node adds the room to its Hub first).
        rec.rooms.add("room2")
        assert await bus.add_interest("room2") is None  # deferred: no position to answer
        hub = EmbeddedBusServer(hub_settings(runtime_dir))
        await hub.start()
        await rec.wait_for(lambda: rec.states[-1].ok)
        assert bus.health().ok
        assert bus.ordered_positions("room2")
        other = EmbeddedBus(bus_settings(runtime_dir, 1))
        await other.start(Recorder())
        try:
            await other.publish("room2", b'{"b":2}')
            await other.send_to_user("user", b'{"u":1}')
            await rec.wait_for(lambda: rec.publications and rec.user_messages)
            assert rec.publications == [("room2", 1, b'{"b":2}')]
            assert (await other.presence("room", 5)).count == 1
        finally:
            await other.close()
    finally:
        await bus.close()
        await hub.close()


async def test_start_without_hub_fails_explicitly(runtime_dir: str) -> None:
    bus = EmbeddedBus(bus_settings(runtime_dir, 0))
    with pytest.raises(BusUnavailable, match="Required action"):
        await bus.start(Recorder())


async def test_cluster_metrics_and_health(hub: EmbeddedBusServer, runtime_dir: str) -> None:
    a = EmbeddedBus(bus_settings(runtime_dir, 0),
                    metrics_provider=lambda: "# HELP m x\n# TYPE m counter\nm{worker=\"0\"} 1\n",
                    health_provider=lambda: {"ok": True, "connections": 3})
    await a.start(Recorder())
    try:
        health = await a.cluster_health()
        # Two workers expected, one connected: degraded, naming the missing one.
        assert health["status"] == "degraded"
        assert health["workers"]["0"] == {"ok": True, "connections": 3}
        assert any("worker 1" in r for r in health["reasons"])
        b = EmbeddedBus(bus_settings(runtime_dir, 1),
                        metrics_provider=lambda: "# TYPE m counter\nm{worker=\"1\"} 2\n",
                        health_provider=lambda: {"ok": True, "connections": 4})
        await b.start(Recorder())
        try:
            health = await b.cluster_health()
            assert health["status"] == "ok", health
            text = await b.cluster_metrics()
            assert text.count("# TYPE m counter") == 1
            assert 'm{worker="0"} 1' in text and 'm{worker="1"} 2' in text
            assert "rtserver_cluster_workers_missing 0" in text
        finally:
            await b.close()
    finally:
        await a.close()


def test_merge_metrics_texts() -> None:
    merged = merge_metrics_texts([
        "# HELP a A\n# TYPE a gauge\na{worker=\"0\"} 1\n# HELP b B\n# TYPE b counter\nb 2\n",
        "# HELP a A\n# TYPE a gauge\na{worker=\"1\"} 3\n",
    ])
    assert merged == ('# HELP a A\n# TYPE a gauge\na{worker="0"} 1\na{worker="1"} 3\n'
                      "# HELP b B\n# TYPE b counter\nb 2\n")


async def test_request_timeout_when_hub_stops_answering(runtime_dir: str) -> None:
    """A hub that answers HELLO and then nothing: requests fail after request_timeout."""
    path = f"{runtime_dir}/bus.sock"

    async def silent_hub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        while data := await reader.read(65536):
            for frame in frames.feed(data):
                if frame.kind == K_HELLO:
                    writer.write(encode(K_ACK, frame.req, 0, "",
                                        msgspec.msgpack.encode({"instance": "silent"})))

    server = await asyncio.start_unix_server(silent_hub, path)
    settings = dataclasses.replace(bus_settings(runtime_dir, 0), request_timeout=0.2)
    bus = EmbeddedBus(settings)
    await bus.start(Recorder())
    try:
        with pytest.raises(BusUnavailable, match=r"did not answer publish within 0\.2s"):
            await bus.publish("r", b'{"a":1}')
    finally:
        await bus.close()
        server.close()
