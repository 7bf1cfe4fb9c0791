"""Pure-Python reference of the fan-out core (:mod:`rtserver._fanout`).

Same API and the same bytes on the wire as the compiled core; it exists for
tests and for comparison in ``bench/fanout_micro.py`` and is used by a server
only when selected explicitly (``--fanout python``), which is announced in the
startup log.

Semantics shared with the compiled core:

* ``send``/``send_many`` frame the payload once (RFC 6455 text frame, FIN set,
  unmasked) and queue the same bytes for every target.
* Frames queued during one event-loop iteration are flushed together, one
  write per connection (the cork), in the order they were queued.
* At flush time a connection that is no longer OPEN, or is in the middle of a
  fragmented message, is skipped and counted (never written to mid-frame).
* A connection whose buffered outbound bytes would exceed ``outbound_limit``
  is handed to ``on_slow_consumer`` (which closes it with 1013) and counted;
  its pending frames are discarded and counted as ``dropped_slow``.
* Connections that negotiated per-message-deflate take the per-connection
  path through the websockets protocol object, counted as ``compressed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.protocol import State

__all__ = ["Fanout", "Sink", "frame_text"]


def frame_text(payload: bytes) -> bytes:
    """Return one unmasked RFC 6455 text frame with FIN set carrying ``payload``."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


class Sink:
    """The write side of one websockets connection, owned by the hub."""

    __slots__ = ("closed", "compressed", "connection", "owner", "pending", "pending_bytes",
                 "transport")

    def __init__(self, connection: Connection, owner: object) -> None:
        self.connection = connection
        self.owner = owner
        self.transport: Any = connection.transport
        self.compressed = bool(connection.protocol.extensions)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.closed = False

    def buffered(self) -> int:
        """Bytes queued here plus bytes the transport has not written yet."""
        return self.pending_bytes + int(self.transport.get_write_buffer_size())


class Fanout:
    """Frame once, cork per loop tick, write to many connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        outbound_limit: int,
        on_slow_consumer: Callable[[Sink, int], None],
    ) -> None:
        self._loop = loop
        self._limit = outbound_limit
        self._on_slow = on_slow_consumer
        self._dirty: list[Sink] = []
        self._scheduled = False
        self._stats = dict.fromkeys(
            ("deliveries", "frames_encoded", "writes", "bytes_written", "coalesced",
             "skipped_not_open", "skipped_fragmented", "slow_consumers", "dropped_slow",
             "compressed"), 0)

    def _queue(self, sink: Sink, frame: bytes, payload: bytes) -> None:
        if sink.closed:
            self._stats["skipped_not_open"] += 1
            return
        if sink.compressed:
            self._stats["compressed"] += 1
            conn = sink.connection
            if conn.protocol.state is not State.OPEN:
                self._stats["skipped_not_open"] += 1
                return
            if conn.send_in_progress is not None:
                self._stats["skipped_fragmented"] += 1
                return
            conn.protocol.send_text(payload)
            conn.send_data()
            self._stats["deliveries"] += 1
            return
        if not sink.pending:
            self._dirty.append(sink)
        sink.pending.append(frame)
        sink.pending_bytes += len(frame)
        self._stats["deliveries"] += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def send(self, sink: Sink, payload: bytes) -> None:
        """Queue ``payload`` as one text frame for ``sink``."""
        frame = frame_text(payload)
        self._stats["frames_encoded"] += 1
        self._queue(sink, frame, payload)

    def send_many(self, sinks: Iterable[Sink], payload: bytes,
                  exclude: Sink | None = None) -> int:
        """Queue ``payload`` framed once for every sink but ``exclude``; return the count."""
        frame = frame_text(payload)
        self._stats["frames_encoded"] += 1
        n = 0
        for sink in sinks:
            if sink is exclude:
                continue
            self._queue(sink, frame, payload)
            n += 1
        return n

    def flush(self) -> None:
        """Write every pending frame now, one write per connection."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for sink in dirty:
            frames = sink.pending
            size = sink.pending_bytes
            sink.pending = []
            sink.pending_bytes = 0
            if sink.closed:
                self._stats["skipped_not_open"] += len(frames)
                continue
            conn = sink.connection
            if conn.protocol.state is not State.OPEN:
                self._stats["skipped_not_open"] += len(frames)
                continue
            if conn.send_in_progress is not None:
                self._stats["skipped_fragmented"] += len(frames)
                continue
            buffered = size + int(sink.transport.get_write_buffer_size())
            if buffered > self._limit:
                sink.closed = True
                self._stats["slow_consumers"] += 1
                self._stats["dropped_slow"] += len(frames)
                self._on_slow(sink, buffered)
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._stats["coalesced"] += len(frames) - 1
            sink.transport.write(data)
            self._stats["writes"] += 1
            self._stats["bytes_written"] += size

    def stats(self) -> dict[str, int]:
        """Counters since start (a copy)."""
        return dict(self._stats)
