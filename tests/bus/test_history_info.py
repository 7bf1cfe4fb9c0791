"""``Bus.history_info``: the history depth of rooms and the retention bounds, the same on
the local bus, the embedded hub (real clients) and Redis; and the per-room rate counter."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from rtserver.bus.base import Bus, HistoryReport
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.local import LocalBus
from rtserver.bus.room_streams import RoomStreams
from rtserver.room_rates import RoomRates

from .conftest import HISTORY, Recorder

pytestmark = pytest.mark.timeout(30)


async def _publish_and_report(bus: Bus, n: int) -> HistoryReport:
    for i in range(n):
        await bus.publish("r:deep", b'{"i":%d}' % i)
    return await bus.history_info(["r:deep", "r:never"])


def _check(report: HistoryReport, n: int, size: int, body_bytes: int) -> None:
    deep, never = report.rooms
    assert never is None
    assert deep is not None and deep.room == "r:deep"
    assert deep.held == min(n, size) and deep.last_seq == n
    assert deep.first_seq == n - min(n, size) + 1 and deep.bytes == body_bytes
    assert report.history_size == size and report.history_ttl == 300.0


async def test_local_bus() -> None:
    bus = LocalBus(dataclasses.replace(HISTORY, history_size=5))
    await bus.start(Recorder())
    report = await _publish_and_report(bus, 7)
    # bodies {"i":2} .. {"i":6}: 7 bytes each
    _check(report, 7, 5, 5 * 7)
    await bus.close()


async def test_embedded_hub(pair: tuple[tuple[EmbeddedBus, Recorder], ...]) -> None:
    (bus0, _), (bus1, _) = pair
    for i in range(3):
        await bus0.publish("r:deep", b'{"i":%d}' % i)
    report = await bus1.history_info(["r:deep", "r:never"])
    _check(report, 3, HISTORY.history_size, 3 * 7)
    # Asking creates no stream.
    again = await bus1.history_info(["r:never"])
    assert again.rooms == [None]


async def test_redis_bus(make_bus: Callable[..., Any]) -> None:
    bus, _ = await make_bus(history_size=4)
    report = await _publish_and_report(bus, 6)
    _check(report, 6, 4, 4 * 7)
    deep = report.rooms[0]
    assert deep is not None and deep.epoch == (await bus.position("r:deep")).epoch


def test_room_streams_trim_by_age_before_answering() -> None:
    streams = RoomStreams(dataclasses.replace(HISTORY, history_ttl=10.0), "local")
    streams.publish("r", b"old", None, now=1.0)
    streams.publish("r", b"new", None, now=8.0)
    [info] = streams.history_info(["r"], now=12.0).rooms
    assert info is not None and (info.held, info.first_seq, info.last_seq) == (1, 2, 2)


def test_room_rates_window() -> None:
    rates = RoomRates(10)
    for t in (100.0, 100.5, 101.2, 105.9):
        rates.count("r", t)
    assert rates.rate("r", 106.0) == (0.4, 4)
    # second 100 leaves the window at 110, 101 at 111, 105 at 115
    assert rates.rate("r", 110.0) == (0.2, 4)
    assert rates.rate("r", 111.5) == (0.1, 4)
    assert rates.rate("r", 130.0) == (0.0, 4)
    rates.count("r", 131.0)
    assert rates.rate("r", 131.0) == (0.1, 5)
    rates.forget("r")
    assert rates.rate("r", 131.0) == (0.0, 0) and len(rates) == 0
