"""One client connection of a generator process: a raw socket and its state machine.

The connection opens a non-blocking socket, does the WebSocket handshake by hand
(:mod:`rtserver.bench.wsproto`), authenticates with the token in its URL path,
subscribes to its room and then records every delivery (kernel receive timestamp,
sequence gaps, duplicates) into the counters of its owner, the generator process
(:class:`ConnOwner`, implemented by :class:`rtserver.bench.generator.Generator`).
All I/O happens in uvloop reader/writer callbacks: no task or future per connection.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import struct
import time
from array import array
from collections.abc import Callable
from typing import Protocol

from rtserver.bench.wsproto import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    handshake_request,
    masked_frame,
    parse_frames,
    parse_handshake_response,
)

__all__ = [
    "AUTH",
    "CONNECTING",
    "DEAD",
    "HANDSHAKE",
    "READY",
    "SO_TIMESTAMPNS",
    "STATE_NAMES",
    "SUBSCRIBING",
    "Conn",
    "ConnOwner",
    "DeliveryCounters",
]

SO_TIMESTAMPNS = 35  # Linux asm-generic; also the SCM type of the control message
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
RECV_SIZE = 65536  # above glibc's mmap threshold each recvmsg would cost an mmap+munmap
CMSG_SIZE = socket.CMSG_SPACE(16)
_TS = struct.Struct("qq")

_TYPE_RE = re.compile(rb'"type":\s*"(\w+)"')
_SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
_BT_RE = re.compile(rb'"bt":\s*(\d+)')
_CODE_RE = re.compile(rb'"code":\s*"([^"]*)"')
_EPOCH_RE = re.compile(rb'"epoch":\s*"([^"]*)"')

# connection states
CONNECTING, HANDSHAKE, AUTH, SUBSCRIBING, READY, DEAD = range(6)
STATE_NAMES = ("connecting", "handshake", "auth", "subscribing", "ready", "dead")

class DeliveryCounters:
    """The counters a :class:`Conn` updates in place on its owner (one place to set them up)."""

    def __init__(self) -> None:
        self.lat = array("q")
        self.fanout: dict[int, list[int]] = {}
        self.deliveries = 0
        self.recv_unique = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.user_clock = 0
        self.send_errors = 0
        self.close_send_errors = 0


class ConnOwner(Protocol):
    """What a :class:`Conn` needs from the generator process that owns it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The process's event loop (uvloop)."""

    @property
    def offset(self) -> int:
        """CLOCK_REALTIME - CLOCK_MONOTONIC in ns, to convert kernel timestamps."""

    @property
    def closed_loop(self) -> bool:
        """Whether publishers send their next message when one comes back."""

    lat: array[int]
    fanout: dict[int, list[int]]
    deliveries: int
    recv_unique: int
    duplicates: int
    out_of_order: int
    user_clock: int
    send_errors: int
    close_send_errors: int

    def conn_ready(self, c: Conn) -> None:
        """``c`` finished handshake, auth and (if it has a room) subscribe."""

    def conn_failed(self, c: Conn, reason: str) -> None:
        """``c`` failed before or after becoming ready."""

    def conn_lost(self, c: Conn, reason: str) -> None:
        """The server closed or broke ``c``."""

    def count_error(self, code: str) -> None:
        """An error frame with ``code`` arrived on a ready connection."""

    def on_ack(self, c: Conn, p: bytes) -> None:
        """An ack frame ``p`` for one of ``c``'s publishes."""

    def closed_loop_next(self, c: Conn) -> None:
        """``c`` got one of its own messages back (closed-loop publishing)."""


class Conn:
    """One client connection; all I/O happens in its reader/writer callbacks."""

    __slots__ = (
        "accept",
        "buf",
        "epoch",
        "frag",
        "gen",
        "hook",
        "inflight",
        "is_pub",
        "missing",
        "next",
        "path",
        "request",
        "room",
        "room_name",
        "sock",
        "state",
        "sub_seq",
        "wbuf",
    )

    def __init__(self, gen: ConnOwner, room: int, room_name: str, is_pub: bool) -> None:
        self.gen = gen
        self.room = room
        self.room_name = room_name
        self.is_pub = is_pub
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.buf = b""
        self.frag: bytes | None = None
        self.wbuf = b""
        self.request = b""
        self.path = ""
        self.accept = b""
        self.sub_seq = 0
        #: The room's epoch from ``subscribed``: ``(epoch, next - 1)`` is the stream
        #: position of the last message received (see :mod:`rtserver.bench.streams` for
        #: clients that reconnect with ``since``). None: the server sends no epoch (peers).
        self.epoch: str | None = None
        self.next = 0
        self.missing: set[int] | None = None
        self.inflight = 0
        #: When set, every text frame after the handshake goes to this callback instead
        #: of the measuring fast path (the chaos scenario's stream-tracking clients).
        self.hook: Callable[[Conn, bytes], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str, port: int, path: str, source: str | None,
              rcvbuf: int = 0) -> None:
        """Open the socket and start a non-blocking connect (``rcvbuf``: SO_RCVBUF if > 0)."""
        gen = self.gen
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            gen.conn_failed(self, f"socket(): {exc.strerror}")
            return
        self.sock = s
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if rcvbuf > 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
        self.request, self.accept = handshake_request(host, port, path)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            gen.conn_failed(self, f"connect: {os.strerror(err)}")
            return
        gen.loop.add_writer(s.fileno(), self._on_connected)

    def _on_connected(self) -> None:
        s = self.sock
        assert s is not None
        self.gen.loop.remove_writer(s.fileno())
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.gen.conn_failed(self, f"connect: {os.strerror(err)}")
            return
        self.state = HANDSHAKE
        self.gen.loop.add_reader(s.fileno(), self.on_readable)
        self.write(self.request)

    def write(self, data: bytes) -> None:
        """Send ``data`` now or queue it behind earlier unsent bytes."""
        s = self.sock
        if s is None or self.state == DEAD:
            self.gen.send_errors += 1
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            n = s.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.gen.conn_failed(self, f"send: {exc.strerror}")
            return
        if n < len(data):
            self.wbuf = data[n:]
            self.gen.loop.add_writer(s.fileno(), self._flush)

    def _flush(self) -> None:
        s = self.sock
        assert s is not None
        try:
            n = s.send(self.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self.gen.conn_failed(self, f"send: {exc.strerror}")
            return
        self.wbuf = self.wbuf[n:]
        if not self.wbuf:
            self.gen.loop.remove_writer(s.fileno())

    def close(self) -> None:
        """Send a 1000 close frame (best effort, counted on failure) and close."""
        s = self.sock
        if s is None:
            return
        loop = self.gen.loop
        fd = s.fileno()
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        if self.state in (AUTH, SUBSCRIBING, READY) and not self.wbuf:
            try:
                s.send(masked_frame(b"\x03\xe8", OP_CLOSE))
            except OSError:
                self.gen.close_send_errors += 1
        s.close()
        self.sock = None
        self.state = DEAD

    def abort(self) -> None:
        """Reset the TCP connection (SO_LINGER 0: an RST, no close frame) and close."""
        s = self.sock
        if s is None:
            return
        loop = self.gen.loop
        loop.remove_reader(s.fileno())
        loop.remove_writer(s.fileno())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        self.sock = None
        self.state = DEAD

    def pause_reading(self) -> None:
        """Stop reading: the server's buffers for this connection fill up (slow consumer)."""
        if self.sock is not None:
            self.gen.loop.remove_reader(self.sock.fileno())

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if self.sock is not None and self.state != DEAD:
            self.gen.loop.add_reader(self.sock.fileno(), self.on_readable)

    # ------------------------------------------------------------------ receive path
    def on_readable(self) -> None:
        """Reader callback: recvmsg with the kernel timestamp, then parse frames."""
        s = self.sock
        if s is None:
            return
        try:
            data, anc, _flags, _addr = s.recvmsg(RECV_SIZE, CMSG_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.gen.conn_lost(self, f"recv: {exc.strerror}")
            return
        if not data:
            self.gen.conn_lost(
                self, f"server closed the TCP connection in state {STATE_NAMES[self.state]}"
            )
            return
        gen = self.gen
        if anc:
            sec, nsec = _TS.unpack(anc[0][2][:16])
            rts = sec * 1_000_000_000 + nsec - gen.offset
        else:
            rts = time.monotonic_ns()
            gen.user_clock += 1
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            problem = parse_handshake_response(data[:end], self.accept)
            if problem is not None:
                gen.conn_failed(self, problem)
                return
            self.state = AUTH
            data = data[end + 4 :]
            if not data:
                return
        frames: list[tuple[int, bool, bytes]] = []
        try:
            used = parse_frames(data, frames)
        except FrameError as exc:
            gen.conn_lost(self, str(exc))
            return
        if used < len(data):
            self.buf = data[used:]
        for op, fin, payload in frames:
            if op in (OP_TEXT, OP_CONT):
                if not fin:
                    self.frag = payload if op == OP_TEXT else (self.frag or b"") + payload
                    continue
                if op == OP_CONT:
                    payload = (self.frag or b"") + payload
                    self.frag = None
                self.on_text(payload, rts)
                if self.sock is None:
                    return
            elif op == OP_PING:
                self.write(masked_frame(payload, OP_PONG))
            elif op == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                gen.conn_lost(
                    self, f"server closed with code {code} in state {STATE_NAMES[self.state]}"
                )
                return
            elif op != OP_PONG:
                gen.conn_lost(self, f"unexpected opcode {op}")
                return

    def on_text(self, p: bytes, rts: int) -> None:
        """Handle one text message."""
        if self.hook is not None:
            self.hook(self, p)
            return
        gen = self.gen
        if self.state == READY:
            m = _TYPE_RE.search(p)
            kind = m.group(1) if m is not None else b""
            if kind == b"message":
                seq = int(_SEQ_RE.search(p).group(1))  # type: ignore[union-attr]
                t = int(_BT_RE.search(p).group(1))  # type: ignore[union-attr]
                gen.lat.append(rts - t)
                key = (self.room << 32) | seq
                e = gen.fanout.get(key)
                if e is None:
                    gen.fanout[key] = [t, rts, 1]
                else:
                    if rts > e[1]:
                        e[1] = rts
                    e[2] += 1
                nxt = self.next
                if seq == nxt:
                    self.next = nxt + 1
                    gen.recv_unique += 1
                elif seq > nxt:
                    if self.missing is None:
                        self.missing = set()
                    self.missing.update(range(nxt, seq))
                    self.next = seq + 1
                    gen.recv_unique += 1
                elif self.missing is not None and seq in self.missing:
                    self.missing.discard(seq)
                    gen.out_of_order += 1
                    gen.recv_unique += 1
                else:
                    gen.duplicates += 1
                gen.deliveries += 1
                if self.is_pub and gen.closed_loop:
                    self.inflight -= 1
                    gen.closed_loop_next(self)
            elif kind == b"ack":
                gen.on_ack(self, p)
            elif kind == b"error":
                c = _CODE_RE.search(p)
                gen.count_error(c.group(1).decode() if c else "unknown")
            # heartbeat, pong, presence: nothing to measure
            return
        m = _TYPE_RE.search(p)
        kind = m.group(1) if m is not None else b""
        if kind in (b"heartbeat", b"pong"):
            return
        if kind == b"error":
            gen.conn_failed(
                self,
                "server error in state "
                + STATE_NAMES[self.state]
                + ": "
                + p[:200].decode(errors="replace"),
            )
            return
        if self.state == AUTH:
            if kind == b"connection":
                return
            if kind == b"authenticated":
                if self.room < 0:
                    gen.conn_ready(self)
                else:
                    self.state = SUBSCRIBING
                    self.write(
                        masked_frame(
                            b'{"type":"subscribe","room":"' + self.room_name.encode() + b'","id":1}'
                        )
                    )
                return
        elif self.state == SUBSCRIBING and kind == b"subscribed":
            sm = _SEQ_RE.search(p)
            if sm is None:
                gen.conn_failed(self, "subscribed frame without seq")
                return
            self.sub_seq = int(sm.group(1))
            em = _EPOCH_RE.search(p)
            self.epoch = em.group(1).decode() if em is not None else None
            self.next = self.sub_seq + 1
            gen.conn_ready(self)
            return
        gen.conn_failed(
            self, f"unexpected {kind.decode(errors='replace')!r} in state {STATE_NAMES[self.state]}"
        )
