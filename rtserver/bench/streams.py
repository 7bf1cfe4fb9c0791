"""Stream positions of one bench client across reconnects, and its reconnect backoff.

A :class:`StreamTracker` belongs to one logical client (it outlives each socket
of that client): it remembers per room the last ``(epoch, seq)`` received, builds
the one ``subscribe`` frame that resubscribes every room with ``since`` after a
reconnect, and records what the server answered (``recovered`` / ``replayed`` /
``reason``), every ``message`` (seq and payload id) and every ``gap`` frame in a
per-room event log that :mod:`rtserver.bench.chaos_check` verifies.

:class:`FullJitterBackoff` is the reconnect policy: attempt ``n`` (from 0) waits
``random(0, min(max_delay, min_delay * 2**n))`` seconds from a seeded RNG, and
every attempt is counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "EV_DOWN",
    "EV_GAP",
    "EV_MSG",
    "EV_SUB",
    "FullJitterBackoff",
    "StreamTracker",
]

# Event kinds of a room's log (first element of each tuple):
#: ``(EV_SUB, epoch, seq, since_epoch|None, since_seq|None, recovered|None, replayed|None,
#: reason|None)``: a ``subscribed`` answer.
EV_SUB = "sub"
#: ``(EV_MSG, seq, payload_id)``: a ``message``.
EV_MSG = "msg"
#: ``(EV_GAP, epoch, from_seq, to_seq, reason)``: a ``gap`` frame.
EV_GAP = "gap"
#: ``(EV_DOWN,)``: the connection carrying the subscription ended.
EV_DOWN = "down"


@dataclass
class FullJitterBackoff:
    """Full-jitter exponential backoff with a seeded RNG and an attempt counter.

    ``min_delay`` and ``max_delay`` come from the scenario's options
    (``--reconnect-min`` / ``--reconnect-max``); ``rng`` is seeded by ``--seed``.
    """

    min_delay: float
    max_delay: float
    rng: random.Random
    attempts: int = 0
    consecutive: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_delay <= 0 or self.max_delay < self.min_delay:
            raise ValueError(
                f"reconnect backoff invalid (min {self.min_delay}, max {self.max_delay}). "
                "Required action: use 0 < --reconnect-min <= --reconnect-max")

    def next_delay(self, client: int) -> float:
        """Count one attempt of ``client`` and return the seconds to wait before it."""
        n = self.consecutive.get(client, 0)
        self.consecutive[client] = n + 1
        self.attempts += 1
        cap = min(self.max_delay, self.min_delay * (2 ** min(n, 30)))
        return self.rng.uniform(0.0, cap)

    def succeeded(self, client: int) -> None:
        """``client`` connected: its next failure starts again at attempt 0."""
        self.consecutive.pop(client, None)


class StreamTracker:
    """Per-room stream positions and event logs of one logical client."""

    __slots__ = ("gaps", "log", "not_recovered", "pending", "positions", "recovered",
                 "replayed", "rooms", "subscribed")

    def __init__(self, rooms: list[str]) -> None:
        """``rooms``: the rooms this client subscribes to on every connection."""
        self.rooms = list(rooms)
        #: room -> last ``(epoch, seq)`` received (subscribed, message or gap).
        self.positions: dict[str, tuple[str, int]] = {}
        self.log: dict[str, list[tuple[Any, ...]]] = {r: [] for r in rooms}
        #: rooms asked for on the current connection and not answered yet.
        self.pending: set[str] = set()
        #: rooms subscribed on the current connection.
        self.subscribed: set[str] = set()
        self.recovered = 0
        self.replayed = 0
        self.not_recovered: dict[str, int] = {}
        self.gaps = 0

    def subscribe_frame(self, rooms: list[str] | None = None, msg_id: str = "sub") -> bytes:
        """One ``subscribe`` for ``rooms`` (default: all not subscribed), ``since`` where known."""
        todo = [r for r in (self.rooms if rooms is None else rooms) if r not in self.subscribed]
        items: list[dict[str, Any]] = []
        for r in todo:
            item: dict[str, Any] = {"room": r}
            pos = self.positions.get(r)
            if pos is not None:
                item["since"] = {"epoch": pos[0], "seq": pos[1]}
            items.append(item)
        self.pending.update(todo)
        return orjson.dumps({"type": "subscribe", "rooms": items, "id": msg_id})

    def on_subscribed(self, d: dict[str, Any]) -> None:
        """A ``subscribed`` answer (fresh, recovered or not)."""
        room = str(d["room"])
        pos = self.positions.get(room)
        rec = d.get("recovered")
        self.log[room].append((EV_SUB, d["epoch"], int(d["seq"]),
                               pos[0] if pos else None, pos[1] if pos else None,
                               rec, d.get("replayed"), d.get("reason")))
        self.pending.discard(room)
        self.subscribed.add(room)
        if rec is True:
            self.recovered += 1
            self.replayed += int(d.get("replayed") or 0)
            # The replayed messages follow; the position moves with them.
        else:
            if rec is False:
                reason = str(d.get("reason"))
                self.not_recovered[reason] = self.not_recovered.get(reason, 0) + 1
            self.positions[room] = (str(d["epoch"]), int(d["seq"]))

    def subscribe_failed(self, room: str) -> None:
        """The server refused ``room`` in a subscribe (an ``error`` naming it)."""
        self.pending.discard(room)

    def on_message(self, room: str, seq: int, pid: str) -> None:
        """A ``message`` of ``room`` with ``seq`` and payload id ``pid``."""
        self.log[room].append((EV_MSG, seq, pid))
        pos = self.positions.get(room)
        if pos is not None:
            self.positions[room] = (pos[0], seq)

    def on_gap(self, d: dict[str, Any]) -> None:
        """A ``gap`` frame: ``from_seq..to_seq`` of ``epoch`` will never arrive."""
        room = str(d["room"])
        self.gaps += 1
        self.log[room].append((EV_GAP, d["epoch"], int(d["from_seq"]), int(d["to_seq"]),
                               d.get("reason")))
        self.positions[room] = (str(d["epoch"]), int(d["to_seq"]))

    def connection_lost(self) -> None:
        """The socket ended: every subscription of it is gone."""
        for r in self.subscribed:
            self.log[r].append((EV_DOWN,))
        self.subscribed.clear()
        self.pending.clear()

    def position(self, room: str) -> tuple[str, int] | None:
        """Last known ``(epoch, seq)`` of ``room`` (None before the first subscribe)."""
        return self.positions.get(room)
