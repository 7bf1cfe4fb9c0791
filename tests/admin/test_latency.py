"""Fan-out latency: one histogram observation per publication (not per delivery), exported
on /metrics as a Prometheus histogram and in the console's cluster document; publish
accepted -> delivered across the workers of one node."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import Client, ServerProcess, token
from rtserver.admin_status import parse_metrics
from rtserver.bus.redis_bus import RedisBus
from rtserver.fanout_latency import FANOUT_LATENCY, LATENCY_BUCKETS, FanoutLatency
from rtserver.metrics import Histogram, Registry
from tests.admin.conftest import get, new_prefix, redis_bus
from tests.bus.conftest import Recorder
from tests.domains.insurance.helpers import wait_until


def test_histogram_render_and_quantile() -> None:
    registry = Registry()
    h = registry.histogram("t_seconds", "test", (0.1, 1.0))
    for v in (0.05, 0.05, 0.5, 5.0):
        h.observe(v)
    text = registry.render({"worker": "3"})
    assert 't_seconds_bucket{worker="3",le="0.1"} 2' in text
    assert 't_seconds_bucket{worker="3",le="1"} 3' in text
    assert 't_seconds_bucket{worker="3",le="+Inf"} 4' in text
    assert 't_seconds_count{worker="3"} 4' in text and 't_seconds_sum{worker="3"} 5.6' in text
    assert "# TYPE t_seconds histogram" in text
    assert h.quantile(0.5, h.snapshot()) == pytest.approx(0.1)
    assert h.quantile(0.99, h.snapshot()) == 1.0  # in +Inf: the largest finite bound
    assert h.quantile(0.5, [0, 0, 0]) is None
    with pytest.raises(ValueError, match="Required action"):
        Histogram("bad", "", (1.0, 0.5))


async def test_one_observation_per_publication(domain_server: Any, ws: Any) -> None:
    server = await domain_server()
    members = [await ws(server, token(rooms=["bench:*"])) for _ in range(5)]
    for m in members:
        await m.send({"type": "subscribe", "room": "bench:lat"})
        await m.recv_type("subscribed")
    publisher = await ws(server, token(perms=["publish"], rooms=["bench:*"]))
    before = FANOUT_LATENCY.snapshot()
    publishes = 7
    for i in range(publishes):
        await publisher.request({"type": "publish", "room": "bench:lat", "data": {"i": i},
                                 "id": i}, "ack")
    for m in members:
        got = 0
        while got < publishes:
            frame = await m.recv()
            got += frame["type"] == "message"
    # 7 publications to 5 members: 7 observations, not 35.
    await wait_until(lambda: sum(FANOUT_LATENCY.snapshot()) - sum(before) == publishes,
                     "one latency observation per publication")
    delta = [a - b for a, b in zip(FANOUT_LATENCY.snapshot(), before, strict=True)]
    assert sum(delta) == publishes
    assert FANOUT_LATENCY.quantile(0.99, delta) is not None
    assert FANOUT_LATENCY.quantile(0.99, delta) <= LATENCY_BUCKETS[-1]

    status, _, body = await get(server.port, "/metrics")
    text = body.decode()
    assert status == 200 and "# TYPE rtserver_fanout_latency_seconds histogram" in text
    assert 'rtserver_fanout_latency_seconds_bucket{worker="0",le="+Inf"}' in text
    _, _, body = await get(server.port, "/admin/cluster", token(perms=["admin:monitor"]))
    doc = orjson.loads(body)["workers"]["0"]
    latency = doc["latency"]
    assert latency["count"] >= publishes and latency["buckets"][-1][1] == latency["count"]
    # One worker on the local bus: accepted -> delivered in the same process.
    delivery = doc["delivery_latency"]
    assert delivery["count"] >= publishes and delivery["buckets"][-1][1] == delivery["count"]


def _histogram(text: str, name: str, worker: str) -> tuple[float, float, float]:
    """(count, sum, +Inf bucket) of one worker's series of histogram ``name``."""
    values = {metric: value for metric, labels, value in parse_metrics(text)
              if labels.get("worker") == worker and metric.startswith(name)
              and labels.get("le") in (None, "+Inf")}
    return values[name + "_count"], values[name + "_sum"], values[name + "_bucket"]


async def test_publish_delivery_latency_across_two_workers() -> None:
    """Published on one worker, delivered by both: each worker observes accepted ->
    delivered, carried through the embedded bus (the origin's own delivery included)."""
    proc = ServerProcess(["--workers", "2", "--domains", "", "--log-level", "warning"],
                         listening_lines=2)
    clients: list[Client] = []
    try:
        port = await asyncio.to_thread(proc.wait_listening, 60.0)
        tok = token(perms=["publish"], rooms=["bench:*"])
        by_worker: dict[int, list[Client]] = {0: [], 1: []}
        # SO_REUSEPORT spreads connections: connect until each worker has two.
        for _ in range(200):
            if min(len(v) for v in by_worker.values()) >= 2:
                break
            c = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={tok}"))
            clients.append(c)
            welcome = await c.recv()
            await c.recv_type("authenticated")
            by_worker[welcome["worker"]].append(c)
        assert min(len(v) for v in by_worker.values()) >= 2, "both workers got connections"
        members = [by_worker[0][0], by_worker[1][0]]
        for m in members:
            await m.request({"type": "subscribe", "room": "bench:delivery", "id": 1},
                            "subscribed")
        publisher = by_worker[1][1]  # worker 1 accepts; worker 0 delivers across the bus
        publishes = 20
        for i in range(publishes):
            await publisher.request({"type": "publish", "room": "bench:delivery",
                                     "data": {"i": i}, "id": i}, "ack")
        for m in members:
            for _ in range(publishes):
                await m.recv_type("message")
        name = "rtserver_publish_delivery_latency_seconds"

        def observed() -> bool:
            # The cluster /metrics (every worker through the hub); the histogram is
            # observed after the members' frames are written, one tick later at most.
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=10).read().decode()
            return all(_histogram(text, name, w)[0] >= publishes for w in ("0", "1"))

        async with asyncio.timeout(20):
            while not await asyncio.to_thread(observed):
                await asyncio.sleep(0.1)
        text = (await asyncio.to_thread(urllib.request.urlopen,
                                        f"http://127.0.0.1:{port}/metrics")).read().decode()
        assert f"# TYPE {name} histogram" in text
        for worker in ("0", "1"):
            count, total, inf = _histogram(text, name, worker)
            assert count == inf >= publishes
            # Plausible: more than zero and far less than a second per publication.
            assert 0 < total / count < 1.0, (worker, count, total)
    finally:
        for c in clients:
            await c.ws.close()
        proc.proc.terminate()
        await asyncio.to_thread(proc.read_rest, 30.0)


async def test_replays_are_not_timed() -> None:
    """A publication without an accepted time (0.0: replayed, another node's) is observed
    in the fan-out histogram only."""
    fanout = Registry().histogram("f_seconds", "", LATENCY_BUCKETS)
    delivery = Registry().histogram("d_seconds", "", LATENCY_BUCKETS)
    latency = FanoutLatency(fanout, delivery)
    latency.queued(latency.arrived(), 0.0)
    latency.queued(latency.arrived(), time.monotonic())
    await asyncio.sleep(0)  # the tick's callback
    await asyncio.sleep(0)
    assert sum(fanout.snapshot()) == 2 and sum(delivery.snapshot()) == 1


class _Stamps(Recorder):
    """Records the bus's accepted time of every publication handed to it."""

    def __init__(self) -> None:
        super().__init__()
        self.bus: Any = None
        self.accepted: list[float] = []

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        self.accepted.append(self.bus.accepted_at)
        super().on_publication(room, epoch, seq, body)


async def test_redis_bus_times_only_this_machines_publications() -> None:
    """Redis (127.0.0.1:6379): a publication carries its node, clock and accepted time; a
    worker times it only when it was accepted on its own machine's monotonic clock."""
    prefix = new_prefix()
    here = redis_bus(6379, prefix, 0).settings
    elsewhere = dataclasses.replace(redis_bus(6379, prefix, 1).settings,
                                    clock_id="boot:another-machine")
    sibling = redis_bus(6379, prefix, 2).settings
    receiver, remote, local = RedisBus(here), RedisBus(elsewhere), RedisBus(sibling)
    stamps = _Stamps()
    stamps.bus = receiver
    await receiver.start(stamps)
    await remote.start(Recorder())
    await local.start(Recorder())
    try:
        stamps.rooms.add("bench:clock")
        await receiver.add_interest("bench:clock")
        before = time.monotonic()
        await remote.publish("bench:clock", b'{"type":"message","n":1}')
        await local.publish("bench:clock", b'{"type":"message","n":2}')
        await stamps.wait_for(lambda: len(stamps.accepted) == 2)
        from_remote, from_sibling = stamps.accepted
        assert from_remote == 0.0  # another machine's clock: not observed
        assert before <= from_sibling <= time.monotonic()  # a sibling worker's: observed
        assert receiver.accepted_at == 0.0  # only while the publication is handed over
    finally:
        for bus in (receiver, remote, local):
            await bus.close()
