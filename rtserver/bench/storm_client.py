"""One logical client of the storm scenario, and the SDK's reconnect delays.

:class:`Backoff` is clients/js/src/backoff.js: attempt ``a`` (from 0) waits
``random(0, min(max, min * 2**a))`` with ``full`` jitter, exactly
``min(max, min * 2**a)`` with ``none``. :class:`SClient` outlives its sockets: it
holds its room, its stream position and its figures of the current storm.
"""

from __future__ import annotations

import random
from typing import Any

from rtserver.bench.connection import Conn

__all__ = ["Backoff", "SClient"]


class Backoff:
    """The SDK's reconnect delays, with (``full``) or without (``none``) jitter."""

    def __init__(self, min_delay: float, max_delay: float, rng: random.Random) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError(f"backoff delays invalid (min {min_delay}, max {max_delay}). "
                             "Required action: use 0 < --backoff-min <= --backoff-max")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.rng = rng
        self.jitter = "full"

    def delay(self, attempt: int) -> float:
        """Seconds before the reconnect that follows ``attempt`` failures (from 0)."""
        cap = min(self.max_delay, self.min_delay * (2 ** min(attempt, 30)))
        return float(self.rng.random() * cap if self.jitter == "full" else cap)


class SClient:
    """One logical client: its room, its current socket and its stream position."""

    __slots__ = ("affected", "attempt", "attempts", "conn", "epoch", "epoch_changes", "gen",
                 "idx", "inflight", "last_before", "last_n", "missing", "next", "path",
                 "ready_at", "room", "rooms", "since_sent", "sub_seq", "t_back", "t_down",
                 "timer", "worker")

    def __init__(self, idx: int, room: str, path: str) -> None:
        self.idx = idx
        self.room = room
        self.path = path
        self.conn: Conn | None = None
        self.worker = -1
        self.epoch: str | None = None
        self.next = 0
        self.missing: set[int] | None = None
        self.last_n = 0
        self.attempt = 0
        self.attempts = 0
        self.ready_at = 0.0
        self.affected = False
        self.t_down = 0
        self.t_back = 0
        self.sub_seq = -1
        self.since_sent = False
        self.last_before = -1
        self.epoch_changes = 0
        self.timer: Any = None
        #: Publishers: rooms owned, and id -> (room, frame) sent and not acknowledged.
        self.rooms: list[str] = []
        self.inflight: dict[str, tuple[str, bytes]] = {}
        self.gen = 0
