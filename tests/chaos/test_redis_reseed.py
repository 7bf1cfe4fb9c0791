"""Found by ``rtserver bench chaos --topology redis``: a seq jump inside one epoch.

After Redis lost its data, a node that reconnects raises the seq counters of its rooms
back to what it delivered (``RESEED``). When another node (or a freshly respawned
worker) already started the room's new epoch before that, the reseed moves the
counter of that epoch forward: a client told ``subscribed {epoch: E, seq: 0}`` next
receives seq 6 of E (in the chaos run: 51), i.e. seqs 1..5 of E "skipped" with no
``gap`` frame. No publication is lost, but the contract "seq increases by exactly one
per publication" is broken, and a client cannot tell the jump from a silent loss.

Real buses and a private redis-server, no mocks; deterministic: node A reconnects
only after a 1.5 s backoff, so node B starts the new epoch first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtserver.backoff import BackoffPolicy
from rtserver.bench.chaos_faults import RedisServer, free_port
from rtserver.bus.base import BusHealth, InterestSnapshot, StreamPosition
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id

pytestmark = pytest.mark.timeout(40)

ROOM = "bench:reseed"


class Node:
    """A minimal bus handler: the rooms it watches and the positions it delivered."""

    def __init__(self) -> None:
        self.rooms: set[str] = set()
        self.positions: dict[str, StreamPosition] = {}
        self.gaps: list[tuple[str, str, int, int, str]] = []
        self.states: list[BusHealth] = []
        self.changed = asyncio.Event()

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        self.positions[room] = StreamPosition(epoch=epoch, seq=seq)
        self.changed.set()

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        self.gaps.append((room, epoch, from_seq, to_seq, reason))
        self.positions[room] = StreamPosition(epoch=epoch, seq=to_seq)
        self.changed.set()

    def on_room_event(self, room: str, payload: bytes) -> None:
        self.changed.set()

    def on_user_message(self, user: str, payload: bytes) -> None:
        self.changed.set()

    def on_bus_state(self, health: BusHealth) -> None:
        self.states.append(health)
        self.changed.set()

    def interest_snapshot(self) -> InterestSnapshot:
        return InterestSnapshot(rooms=sorted(self.rooms), users=[], presence=[],
                                positions={r: p for r, p in self.positions.items()
                                           if r in self.rooms})

    async def wait_for(self, predicate: object, timeout: float = 10.0) -> None:
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def _settings(url: str, worker: int, reconnect: BackoffPolicy) -> RedisBusSettings:
    return RedisBusSettings(
        url=url, key_prefix="rtchaos-reseed", node_id=default_node_id(worker), history_size=50,
        history_ttl=300.0, history_max_bytes=1 << 20, idempotency_window=60.0,
        presence_ttl=30.0, presence_refresh_interval=10.0, request_timeout=2.0,
        connect_timeout=1.0, max_connections=8, publish_batch_max=64, reconnect=reconnect)


async def test_seq_continues_by_one_in_an_epoch_started_before_a_reseed(tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path, 10.0)
    await redis.start()
    a_node, b_node = Node(), Node()
    bus_a = RedisBus(_settings(redis.url, 0, BackoffPolicy(1.5, 1.5, 0.0)))
    bus_b: RedisBus | None = None
    try:
        await bus_a.start(a_node)
        a_node.rooms.add(ROOM)
        await bus_a.add_interest(ROOM)
        for i in range(5):
            await bus_a.publish(ROOM, b'{"i":%d}' % i)
        await a_node.wait_for(lambda: a_node.positions.get(ROOM, StreamPosition("", 0)).seq == 5)

        await redis.restart()  # no persistence: every key is gone
        await a_node.wait_for(lambda: any(not s.ok for s in a_node.states))
        # Node B (e.g. a worker respawned meanwhile: it delivered nothing yet) comes first.
        bus_b = RedisBus(_settings(redis.url, 1, BackoffPolicy(0.05, 0.3, 0.0)))
        await bus_b.start(b_node)
        b_node.rooms.add(ROOM)
        await bus_b.add_interest(ROOM)
        start = await bus_b.position(ROOM)  # what a subscribing client is told
        assert start.seq == 0
        # Node A reconnects, reseeds its room to 5 and reports the epoch change.
        await a_node.wait_for(lambda: a_node.states[-1].ok and bool(a_node.gaps))
        nxt = await bus_b.publish(ROOM, b'{"i":"after"}')
        # The contract: in one epoch, the next publication after position seq 0 is seq 1.
        assert nxt == StreamPosition(start.epoch, start.seq + 1), (start, nxt)
    finally:
        await bus_a.close()
        if bus_b is not None:
            await bus_b.close()
        await redis.kill()
