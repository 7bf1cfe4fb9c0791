"""One timeout for many connections, swept by one timer (rtserver/ws_server.py bounds
the opening and the closing handshakes with it; docs/architecture.md, "One
connection")."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["DeadlineQueue"]

T = TypeVar("T")


class DeadlineQueue(Generic[T]):
    """Connections bounded by one timeout, swept by one timer instead of a timer each.

    Entries are ``[deadline, connection]`` in the order they were added; with one
    timeout for all, that is deadline order. An entry is cancelled with :meth:`cancel`
    (its connection set to None). The sweep calls ``expire(connection)`` for every
    entry whose deadline passed, between the deadline and an eighth of ``timeout``
    after it (each sweep waits at least that long for the next): per connection, one
    list in place of uvloop's ``TimerHandle``, its libuv timer, a ``Context`` and a
    bound method.
    """

    __slots__ = ("_entries", "_expire", "_loop", "_timer", "timeout")

    def __init__(self, timeout: float, expire: Callable[[T], None]) -> None:
        self.timeout = timeout
        self._expire = expire
        self._entries: collections.deque[list[Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: Any = None

    def bind(self, loop: Any) -> None:
        """Sweep on ``loop`` (the one its connections run on), before the first
        :meth:`watch`."""
        self._loop = loop

    def __len__(self) -> int:
        """Entries kept: the pending ones, and cancelled ones behind a pending one."""
        return len(self._entries)

    def watch(self, connection: T) -> list[Any]:
        """Expire ``connection`` once ``timeout`` has passed, unless the entry returned is
        given to :meth:`cancel` first."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("DeadlineQueue.watch before bind(loop). Required action: bind "
                               "the queue to the loop its connections run on first")
        entry = [loop.time() + self.timeout, connection]
        self._entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry[0], self._sweep)
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Leave ``entry``'s connection alone (answered or ended in time). Cancelled
        entries at the front are dropped at once: connections are mostly answered in
        the order they came, so the queue holds little more than the pending ones."""
        entry[1] = None
        entries = self._entries
        while entries and entries[0][1] is None:
            entries.popleft()

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        entries = self._entries
        while entries and (entries[0][1] is None or entries[0][0] <= now):
            connection = entries.popleft()[1]
            if connection is not None:
                self._expire(connection)
        if entries:
            self._timer = self._loop.call_at(max(entries[0][0], now + self.timeout / 8),
                                             self._sweep)

    def close(self) -> None:
        """Stop the sweep (entries left are not expired)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
