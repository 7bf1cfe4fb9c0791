"""rtserver/deadlines.py: one timer sweeps the entries of one timeout, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rtserver.deadlines import DeadlineQueue


async def test_deadline_queue_expires_in_order_and_skips_cancelled() -> None:
    """The queue under both bounds: entries expire in the order added, once, no earlier
    than their deadline and within an eighth of the timeout after it; a cancelled entry
    is skipped; close() stops the sweep."""
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, float]] = []
    done = loop.create_future()

    def expire(name: Any) -> None:
        expired.append((name, loop.time()))
        if len(expired) == 3:
            done.set_result(None)

    queue = DeadlineQueue(0.2, expire)
    with pytest.raises(RuntimeError, match="before bind"):
        queue.watch("z")
    queue.bind(loop)
    started = {}
    entries = {}
    for name in ("a", "b", "c", "d"):
        started[name] = loop.time()
        entries[name] = queue.watch(name)  # type: ignore[arg-type]
        if name == "b":
            queue.cancel(entries["b"])  # answered in time; behind "a", so still kept
            assert len(queue) == 2
        await asyncio.sleep(0.05)
    await asyncio.wait_for(done, 5)
    assert [name for name, _ in expired] == ["a", "c", "d"]
    for name, at in expired:
        assert started[name] + 0.2 <= at + 0.001 <= started[name] + 0.2 + 0.2 / 8 + 0.15
    assert len(queue) == 0
    queue.watch("e")  # type: ignore[arg-type]
    queue.close()
    assert queue._timer is None


async def test_cancelled_entries_at_the_front_are_dropped_at_once() -> None:
    """Answered in the order they came (a storm's common case), the queue holds only
    what is pending: cancelling the front entry drops it and every cancelled one behind
    it, one cancelled in the middle waits for those before it."""
    loop = asyncio.get_running_loop()
    expired: list[Any] = []
    queue: DeadlineQueue[str] = DeadlineQueue(60.0, expired.append)
    queue.bind(loop)
    entries = [queue.watch(str(i)) for i in range(5)]
    queue.cancel(entries[2])
    assert len(queue) == 5
    queue.cancel(entries[0])
    assert len(queue) == 4  # "1" still pending in front of the cancelled "2"
    queue.cancel(entries[1])
    assert len(queue) == 2  # "1" and "2" both gone
    queue.cancel(entries[3])
    queue.cancel(entries[4])
    assert len(queue) == 0 and expired == []
    queue.close()
