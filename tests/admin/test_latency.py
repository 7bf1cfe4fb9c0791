"""Fan-out latency: one histogram observation per publication (not per delivery), exported
on /metrics as a Prometheus histogram and in the console's cluster document."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import token
from rtserver.fanout_latency import FANOUT_LATENCY, LATENCY_BUCKETS
from rtserver.metrics import Histogram, Registry
from tests.admin.conftest import get
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
    latency = orjson.loads(body)["workers"]["0"]["latency"]
    assert latency["count"] >= publishes and latency["buckets"][-1][1] == latency["count"]
