"""Messages/s per room, counted once per publication in one-second buckets.

:class:`RoomRates` belongs to the worker's :class:`~rtserver.hub.Hub`; the
node's delivery path (``Rooms.on_publication``) calls :meth:`RoomRates.count`
once per publication of a room with local members (never per delivery), with
the arrival time it already took for the fan-out latency
(``time.perf_counter``). Per room it keeps ``[second, index of its bucket,
total, bucket_0 .. bucket_{window-1}]``: a count adds one to the current second's bucket and,
when the second changed, zeroes the buckets of the seconds skipped (at most
``window``, so amortized O(1)). :meth:`RoomRates.rate` is the sum of the last
``window`` buckets divided by ``window`` (``admin.room_rate_window``); the
current second counts in full, so a burst shows at once.

Every worker with members of a room receives each of its publications once,
so each of them counts the room's whole rate; the cluster answer takes the
largest (a worker whose members joined later has counted less).
"""

from __future__ import annotations

from time import perf_counter

__all__ = ["RoomRates"]


class RoomRates:
    """Publication counters of the rooms with local members (one event loop, no locks)."""

    __slots__ = ("_rooms", "window")

    def __init__(self, window: int) -> None:
        """``window``: seconds averaged by :meth:`rate` (>= 1)."""
        if window < 1:
            raise ValueError(f"room rate window {window} must be >= 1 second. Required action: "
                             "set admin.room_rate_window")
        self.window = window
        self._rooms: dict[str, list[int]] = {}

    def _advance(self, counts: list[int], second: int) -> None:
        last = counts[0]
        if second == last:
            return
        window = self.window
        if second - last >= window:
            for i in range(3, window + 3):
                counts[i] = 0
        else:
            for s in range(last + 1, second + 1):
                counts[3 + s % window] = 0
        counts[0] = second
        counts[1] = 3 + second % window

    def count(self, room: str, now: float) -> None:
        """One publication of ``room`` arrived at ``now`` (``perf_counter``)."""
        second = int(now)
        counts = self._rooms.get(room)
        if counts is None:
            counts = [second, 3 + second % self.window, 0] + [0] * self.window
            self._rooms[room] = counts
        elif counts[0] != second:
            self._advance(counts, second)
        # counts: [second, index of its bucket, total, bucket_0 .. bucket_{window-1}]
        counts[counts[1]] += 1
        counts[2] += 1

    def rate(self, room: str, now: float | None = None) -> tuple[float, int]:
        """``(messages/s over the window, publications counted since the room got local
        members)``; ``(0.0, 0)`` for a room with none counted."""
        counts = self._rooms.get(room)
        if counts is None:
            return 0.0, 0
        self._advance(counts, int(perf_counter() if now is None else now))
        return sum(counts[3:]) / self.window, counts[2]

    def forget(self, room: str) -> None:
        """``room`` lost its last local member."""
        self._rooms.pop(room, None)

    def __len__(self) -> int:
        return len(self._rooms)
