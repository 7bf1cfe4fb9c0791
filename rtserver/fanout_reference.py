"""Pure-Python reference of the fan-out core (:mod:`rtserver._fanout`).

Same API, the same algorithm, the same bytes on the wire and the same
counters as the compiled core; it exists for tests and for comparison in
``rtserver/bench/fanout_micro.py`` and is used by a server only when selected
explicitly (``--fanout python``), which is announced in the startup log.

Semantics shared with the compiled core:

* ``send``/``send_many`` frame the payload once (RFC 6455 text frame, FIN set,
  unmasked) and queue the same bytes for every target. Every target handed in
  (except ``exclude``) counts as one *delivery*, and every delivery ends in
  exactly one of ``frames_written``, ``skipped_not_open``,
  ``skipped_fragmented`` or ``dropped_slow`` (after the next flush).
* Frames queued during one event-loop iteration are flushed together by ONE
  ``loop.call_soon`` per :class:`Fanout` (the cork): one write per connection,
  in the order the frames were queued.
* At flush time a connection that was marked closed, whose transport is
  closing, that is no longer OPEN, or that is in the middle of a fragmented
  message is skipped and counted (it is never written to mid-frame).
* A connection whose outbound bytes (queued here plus the transport's write
  buffer) exceed ``outbound_limit`` is handed to ``on_slow_consumer`` (which
  closes it with 1013), marked closed and counted (``slow_consumers``); its
  pending frames are discarded and counted (``dropped_slow``). Frames that
  would push the queue of one tick over the limit are not even stored (they
  are counted in ``dropped_slow`` right away and the connection is reported at
  the flush), so a burst can never grow memory past the limit.
* Writes: when the transport's own write buffer is empty the frames go to the
  socket directly (``writev`` of the pending frames, counted ``direct_sends``);
  whatever the kernel does not take (partial write, EAGAIN) is handed to
  ``transport.write`` so the order is kept (``partial_writes``). When the
  transport already buffers data, or the connection uses TLS, everything goes
  through ``transport.write`` (``transport_writes``). A socket error other
  than EAGAIN (EPIPE, ECONNRESET, ...) is counted (``send_errors``) and the
  data is handed to ``transport.write``, which meets the same error and closes
  the connection the ordinary way, so websockets notices; the sink is then
  marked closed.
* Connections that negotiated per-message-deflate cannot share the frame:
  their payloads are queued the same way and, at flush, compressed one by one
  through the websockets protocol object (``compressed`` counts those
  deliveries). ``bytes_written`` counts only the frame-once path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.protocol import Side, State

__all__ = ["IOV_BATCH", "STATS_KEYS", "Fanout", "Sink", "frame_text"]

#: At most this many frames are written with one ``writev``; more pending
#: frames for one connection are joined into one buffer first (IOV_MAX is 1024).
IOV_BATCH = 64

#: Keys of :meth:`Fanout.stats`, in a fixed order.
STATS_KEYS: tuple[str, ...] = (
    "deliveries",
    "frames_encoded",
    "frames_written",
    "writes",
    "bytes_written",
    "coalesced",
    "direct_sends",
    "partial_writes",
    "transport_writes",
    "send_errors",
    "skipped_not_open",
    "skipped_fragmented",
    "slow_consumers",
    "dropped_slow",
    "compressed",
)

_OPEN = State.OPEN
#: An empty ping, as the server sends it (unmasked, FIN): the heartbeat's keepalive.
_PING = b"\x89\x00"


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


def direct_fd(transport: Any) -> int:
    """File descriptor the core may ``send()`` to directly, or -1 (TLS, no socket)."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    return int(sock.fileno())


class Sink:
    """The write side of one websockets connection, owned by the hub."""

    __slots__ = (
        "closed",
        "compressed",
        "connection",
        "fd",
        "owner",
        "pending",
        "pending_bytes",
        "protocol",
        "queued",
        "transport",
    )

    def __init__(self, connection: Connection, owner: object) -> None:
        if connection.protocol.side is not Side.SERVER:
            raise ValueError(
                "a fan-out Sink needs a server-side websockets connection (server frames are "
                "unmasked). Required action: create Sinks only for accepted connections."
            )
        self.connection = connection
        self.owner = owner
        self.protocol = connection.protocol
        self.transport: Any = connection.transport
        self.compressed = bool(connection.protocol.extensions)
        self.fd = direct_fd(self.transport)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.queued = False
        self.closed = False


class Fanout:
    """Frame once, cork per loop tick, write to many connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        outbound_limit: int,
        on_slow_consumer: Callable[[Sink, int], None],
    ) -> None:
        if outbound_limit <= 0:
            raise ValueError(
                f"outbound_limit must be a positive number of bytes, got {outbound_limit}. "
                "Required action: set a positive outbound buffer limit in the configuration."
            )
        self._loop = loop
        self._limit = outbound_limit
        self._on_slow = on_slow_consumer
        self._dirty: list[Sink] = []
        self._scheduled = False
        self._stats = dict.fromkeys(STATS_KEYS, 0)

    def _queue(self, sink: Sink, frame: bytes, payload: bytes) -> None:
        stats = self._stats
        stats["deliveries"] += 1
        if sink.closed:
            stats["skipped_not_open"] += 1
            return
        sink.pending_bytes += len(frame)
        if sink.pending_bytes > self._limit:
            stats["dropped_slow"] += 1
        elif sink.compressed:
            stats["compressed"] += 1
            sink.pending.append(payload)
        else:
            sink.pending.append(frame)
        if not sink.queued:
            sink.queued = True
            self._dirty.append(sink)

    def _schedule(self) -> None:
        if not self._scheduled and self._dirty:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def send(self, sink: Sink, payload: bytes) -> None:
        """Queue ``payload`` as one text frame for ``sink``."""
        frame = frame_text(payload)
        self._stats["frames_encoded"] += 1
        self._queue(sink, frame, payload)
        self._schedule()

    def send_many(self, sinks: Iterable[Sink], payload: bytes, exclude: Sink | None = None) -> int:
        """Queue ``payload`` framed once for every sink but ``exclude``; return the count."""
        frame = frame_text(payload)
        self._stats["frames_encoded"] += 1
        n = 0
        for sink in sinks:
            if sink is exclude:
                continue
            self._queue(sink, frame, payload)
            n += 1
        self._schedule()
        return n

    def ping_and_send_many(self, sinks: list[Sink], payload: bytes) -> int:
        """Queue an empty ping followed by ``payload`` as one text frame (both framed once)
        for every sink; return the count. Only for uncompressed sinks (a compressed
        sink's frames go through its protocol): ValueError otherwise."""
        frame = _PING + frame_text(payload)
        self._stats["frames_encoded"] += 1
        for sink in sinks:
            if sink.compressed:
                raise ValueError(
                    "ping_and_send_many got a compressed sink. Required action: ping it "
                    "through its protocol and send the payload with send_many")
            self._queue(sink, frame, payload)
        self._schedule()
        return len(sinks)

    def flush(self) -> None:
        """Write every pending frame now, one write per connection."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        i = 0
        try:
            while i < len(dirty):
                self._flush_sink(dirty[i])
                i += 1
        except BaseException:
            # Keep the not yet flushed connections queued (never lose them).
            self._dirty[:0] = dirty[i + 1 :]
            self._schedule()
            raise

    def _flush_sink(self, sink: Sink) -> None:
        stats = self._stats
        frames = sink.pending
        size = sink.pending_bytes
        n = len(frames)
        sink.pending = []
        sink.pending_bytes = 0
        sink.queued = False
        transport = sink.transport
        if sink.closed or transport.is_closing() or sink.protocol.state is not _OPEN:
            stats["skipped_not_open"] += n
            return
        tbuf = int(transport.get_write_buffer_size())
        buffered = size + tbuf
        if buffered > self._limit:
            sink.closed = True
            stats["slow_consumers"] += 1
            stats["dropped_slow"] += n
            self._on_slow(sink, buffered)
            return
        conn = sink.connection
        if conn.send_in_progress is not None:
            stats["skipped_fragmented"] += n
            return
        stats["frames_written"] += n
        stats["coalesced"] += n - 1
        stats["writes"] += 1
        if sink.compressed:
            protocol = sink.protocol
            for payload in frames:
                protocol.send_text(payload)
            conn.send_data()
            return
        stats["bytes_written"] += size
        if sink.fd < 0 or tbuf != 0:
            stats["transport_writes"] += 1
            transport.write(frames[0] if n == 1 else b"".join(frames))
            return
        data = frames[0] if n == 1 else None
        if n > IOV_BATCH:
            data = b"".join(frames)
        try:
            sent = os.write(sink.fd, data) if data is not None else os.writev(sink.fd, frames)
        except BlockingIOError:
            sent = 0
        except OSError:
            stats["send_errors"] += 1
            transport.write(data if data is not None else b"".join(frames))
            if transport.is_closing():
                sink.closed = True
            return
        stats["direct_sends"] += 1
        if sent < size:
            stats["partial_writes"] += 1
            if data is None:
                data = b"".join(frames)
            transport.write(data[sent:])

    def stats(self) -> dict[str, int]:
        """Counters since start (a copy)."""
        return dict(self._stats)
