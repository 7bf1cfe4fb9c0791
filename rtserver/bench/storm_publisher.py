"""The publisher role of a storm generator process (:mod:`rtserver.bench.storm_clients`).

Each publisher connection owns a share of the rooms and publishes ``rate`` messages per
second to each with ``data.n`` (the room's payload counter), an idempotency ``key`` and
an ``id``. While a connection is down its publications are not made (counted as
skipped); one sent and not acknowledged is sent again, same key, on the next
connection. Acks are kept per server generation: the highest acknowledged seq of each
room, so that the receivers can be checked against it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from rtserver.bench.connection import READY, Conn
from rtserver.bench.storm_client import Backoff, SClient
from rtserver.bench.wsproto import masked_frame

__all__ = ["Publishing"]

_SEQ_RE = re.compile(rb'"seq":(\d+)')
_ID_RE = re.compile(rb'"id":"([^"]*)"')


class Publishing:
    """Publisher state and methods, mixed into the storm generator process."""

    loop: asyncio.AbstractEventLoop
    clients: list[SClient]
    by_conn: dict[int, SClient]
    role: str
    stopping: bool
    backoff: Backoff

    def init_publishing(self) -> None:
        """The publisher's counters (every process has them; only ``pub`` uses them)."""
        self.publishing = False
        self.generation = 0
        self.acks: dict[int, dict[str, int]] = {0: {}}
        self.counters: dict[str, int] = {}
        self.rate = 0.0
        self.sent = 0
        self.skipped = 0
        self.acked = 0
        self.pub_errors: dict[str, int] = {}
        self.pause_pending = False
        self._pub_start = 0.0
        self._pub_done = 0

    #: One JSON event line to the controller (the process class implements it).
    emit: Callable[[dict[str, Any]], None]
    #: Count an error code (the process class implements it).
    count_error: Callable[[str], None]

    def _is_ready(self, cl: SClient) -> bool:
        return cl.conn is not None and cl.conn.state == READY

    def set_publishing(self, on: bool) -> None:
        """Start publishing, or stop and announce ``paused`` once every publish is acked."""
        self.publishing = on
        if on:
            self._pub_start = time.monotonic()
            self._pub_done = 0
            self.loop.call_soon(self._tick)
        else:
            self.pause_pending = True
            self._maybe_paused()

    def _tick(self) -> None:
        if not self.publishing or self.stopping:
            return
        total_rate = self.rate * len(self.counters)
        due = int((time.monotonic() - self._pub_start) * total_rate)
        pubs = self.clients
        while self._pub_done < due:
            k = self._pub_done
            self._pub_done += 1
            cl = pubs[k % len(pubs)]
            room = cl.rooms[(k // len(pubs)) % len(cl.rooms)]
            if not self._is_ready(cl):
                self.skipped += 1
                continue
            self.counters[room] += 1
            n = self.counters[room]
            pid = f"{room}#{n}"
            frame = orjson.dumps({"type": "publish", "room": room, "data": {"n": n},
                                  "key": pid, "id": pid})
            cl.inflight[pid] = (room, frame)
            self._write_publish(cl, frame)
        self.loop.call_later(0.005, self._tick)

    def _write_publish(self, cl: SClient, frame: bytes) -> None:
        if cl.conn is not None:
            self.sent += 1
            cl.conn.write(masked_frame(frame))

    def _retry(self, cl: SClient, c: Conn, frame: bytes) -> None:
        if cl.conn is c and c.state == READY:
            self._write_publish(cl, frame)

    def _ack(self, c: Conn, p: bytes) -> None:
        cl = self.by_conn.get(id(c))
        im = _ID_RE.search(p)
        sm = _SEQ_RE.search(p)
        if cl is None or im is None or sm is None:
            self.count_error("ack without a known connection, id or seq")
            return
        pid = im.group(1).decode()
        item = cl.inflight.pop(pid, None)
        if item is None:
            self.count_error("ack for no publish in flight")
            return
        self.acked += 1
        room = item[0]
        table = self.acks.setdefault(cl.gen, {})
        seq = int(sm.group(1))
        if seq > table.get(room, 0):
            table[room] = seq
        self._maybe_paused()

    def _maybe_paused(self) -> None:
        if not self.pause_pending or self.role != "pub":
            return
        if any(cl.inflight for cl in self.clients):
            return
        self.pause_pending = False
        self.emit({"ev": "paused", "finals": self.acks.get(self.generation, {}),
                   "before": self.acks.get(self.generation - 1, {}), "sent": self.sent,
                   "acked": self.acked, "skipped": self.skipped, "errors": self.pub_errors})
