"""Load generator process: holds up to ~15,000 WebSocket client connections.

Run by the controller as ``python -m rtserver.bench.generator``; it reads one JSON command per
line on stdin and writes one JSON event per line on stdout (logs go to stderr).

Design (lean on purpose, so the generator measures the server and not itself):

* raw non-blocking sockets driven by uvloop ``add_reader``/``add_writer`` callbacks:
  no task, future or protocol object per connection, one small ``__slots__`` object;
* hand-written handshake and frame parser (:mod:`rtserver.bench.wsproto`); client frames masked;
* ``recvmsg`` with ``SO_TIMESTAMPNS``: the kernel's receive timestamp (CLOCK_REALTIME)
  is converted to CLOCK_MONOTONIC with an offset measured in this process, so the
  latency ``receive - publish`` is not inflated by the generator's own lag;
* message fields are read with two byte regexes (``"seq":N`` and ``"bt":N``), no JSON
  decoding on the delivery path.

Commands: ``setup``, ``publish``, ``drain``, ``collect``, ``close`` (see the controller
in :mod:`rtserver.bench.runner`).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import socket
import struct
import sys
import time
from array import array
from typing import Any

import orjson
import uvloop

from rtserver.bench.tokens import mint
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

__all__ = ["SO_TIMESTAMPNS", "Generator", "clock_offset_ns", "main", "raise_nofile"]

SO_TIMESTAMPNS = 35  # Linux asm-generic; also the SCM type of the control message
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
RECV_SIZE = 65536  # above glibc's mmap threshold each recvmsg would cost an mmap+munmap
CMSG_SIZE = socket.CMSG_SPACE(16)
_TS = struct.Struct("qq")

_TYPE_RE = re.compile(rb'"type":\s*"(\w+)"')
_SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
_BT_RE = re.compile(rb'"bt":\s*(\d+)')
_CODE_RE = re.compile(rb'"code":\s*"([^"]*)"')

# connection states
CONNECTING, HANDSHAKE, AUTH, SUBSCRIBING, READY, DEAD = range(6)
STATE_NAMES = ("connecting", "handshake", "auth", "subscribing", "ready", "dead")


def clock_offset_ns(samples: int = 9) -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of ``samples`` readings."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        r1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r2 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        width = r2 - r1
        if best is None or width < best[0]:
            best = (width, (r1 + r2) // 2 - m)
    assert best is not None
    return best[1]


def raise_nofile(needed: int) -> int:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if needed > soft:
        raise SystemExit(
            f"this generator needs {needed} descriptors but RLIMIT_NOFILE allows {soft}. "
            "Required action: lower --per-generator"
        )
    return soft


class Conn:
    """One client connection; all I/O happens in its reader/writer callbacks."""

    __slots__ = (
        "accept",
        "buf",
        "frag",
        "gen",
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

    def __init__(self, gen: Generator, room: int, room_name: str, is_pub: bool) -> None:
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
        self.next = 0
        self.missing: set[int] | None = None
        self.inflight = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str, port: int, path: str, source: str | None) -> None:
        """Open the socket and start a non-blocking connect."""
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
            self.next = self.sub_seq + 1
            gen.conn_ready(self)
            return
        gen.conn_failed(
            self, f"unexpected {kind.decode(errors='replace')!r} in state {STATE_NAMES[self.state]}"
        )


class Generator:
    """State of one generator process (connections, counters, samples)."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.offset = clock_offset_ns()
        self.offset_start = self.offset
        self.conns: list[Conn] = []
        self.pending: list[Conn] = []
        self.connecting = 0
        self.ready = 0
        self.failed = 0
        self.lost_conns = 0
        self.errors: dict[str, int] = {}
        self.server_errors: dict[str, int] = {}
        self.lat = array("q")
        self.fanout: dict[int, list[int]] = {}
        self.deliveries = 0
        self.recv_unique = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.user_clock = 0
        self.send_errors = 0
        self.close_send_errors = 0
        self.phase = "idle"
        self.closed_loop = False
        self.publishing = False
        self.pub_end = 0
        self.sent = 0
        self.acked = 0
        self.acks: dict[int, int] = {}
        self.t_first = 0
        self.t_last_ready = 0
        self.expected = 0
        self.cfg: dict[str, Any] = {}
        self.room_names: dict[int, str] = {}
        self.rusage0 = 0.0
        self.wall0 = 0
        self._stdin_buf = b""
        self._done = False

    # ------------------------------------------------------------------ control channel
    def emit(self, event: dict[str, Any]) -> None:
        """Write one JSON event line to the controller."""
        os.write(1, orjson.dumps(event) + b"\n")

    def _on_stdin(self) -> None:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            self.log("controller_gone", "stdin closed; closing every connection")
            self._close_all()
            return
        self._stdin_buf += chunk
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            if line.strip():
                self.command(orjson.loads(line))

    def log(self, event: str, message: str) -> None:
        """A structured line on stderr."""
        line = {"logger": "rtserver.bench.generator", "event": event, "message": message}
        sys.stderr.write(orjson.dumps(line).decode() + "\n")

    def command(self, cmd: dict[str, Any]) -> None:
        """Dispatch one controller command."""
        name = cmd["cmd"]
        if name == "setup":
            self._setup(cmd)
        elif name == "publish":
            self._publish(cmd)
        elif name == "drain":
            self._drain(cmd)
        elif name == "collect":
            self._collect(cmd)
        elif name == "mark":
            self.rusage0 = self._cpu()
            self.wall0 = time.monotonic_ns()
        elif name == "close":
            self._close_all()
        else:
            raise SystemExit(
                f"unknown generator command {name!r}. Required action: fix rtserver.bench.runner"
            )

    def _progress(self) -> None:
        if self._done:
            return
        self._progress_once()
        self.loop.call_later(self.cfg.get("progress_interval", 0.25), self._progress)

    def _progress_once(self) -> None:
        if self.phase == "connect":
            self.emit(
                {"ev": "progress", "phase": "connect", "done": self.ready, "failed": self.failed,
                 "errors": self._error_count()}
            )
        elif self.phase in ("publish", "drain"):
            self.emit(
                {
                    "ev": "progress",
                    "phase": self.phase,
                    "done": self.recv_unique,
                    "sent": self.sent,
                    "expected": self.expected,
                    "errors": self._error_count(),
                }
            )

    def _error_count(self) -> int:
        """Failures so far: connects, lost connections, sends, server error frames."""
        return (self.failed + self.lost_conns + self.send_errors
                + sum(self.server_errors.values()))

    # ------------------------------------------------------------------ connect phase
    def _setup(self, cmd: dict[str, Any]) -> None:
        self.cfg = cmd
        rooms = {int(g): str(n) for g, n in cmd["rooms"]}
        self.room_names = rooms
        secret = os.environ["RTSERVER_JWT_SECRET"]
        ttl = int(cmd["token_ttl"])
        tokens: dict[str, str] = {}
        path = cmd["path"]
        conns_spec = cmd["conns"]
        raise_nofile(len(conns_spec) + 64)
        for room, user, is_pub in conns_spec:
            tok = tokens.get(user)
            if tok is None:
                tok = tokens[user] = mint(secret, user, ttl)
            c = Conn(self, int(room), rooms.get(int(room), ""), bool(is_pub))
            c.path = path + ("&" if "?" in path else "?") + "token=" + tok
            self.conns.append(c)
        self.pending = list(reversed(self.conns))
        self.phase = "connect"
        self.t_first = time.monotonic_ns()
        self.loop.call_later(float(cmd["connect_timeout"]), self._connect_deadline)
        self._progress()
        self._fill_window()
        if not self.conns:
            self._connect_done()

    def _fill_window(self) -> None:
        window = int(self.cfg["window"])
        host, port, source = self.cfg["host"], int(self.cfg["port"]), self.cfg.get("source")
        while self.pending and self.connecting < window:
            c = self.pending.pop()
            self.connecting += 1
            c.start(host, port, c.path, source)

    def conn_ready(self, c: Conn) -> None:
        """A connection finished handshake, auth and (if it has a room) subscribe."""
        c.state = READY
        self.ready += 1
        self.connecting -= 1
        self.t_last_ready = time.monotonic_ns()
        self._after_connect_step()

    def conn_failed(self, c: Conn, reason: str) -> None:
        """A connection failed before or after becoming ready."""
        was = c.state
        c.close()
        if was == READY:
            self.lost_conns += 1
            self.errors[reason] = self.errors.get(reason, 0) + 1
            return
        if was == DEAD:
            return
        self.failed += 1
        self.connecting -= 1
        key = reason if len(reason) < 160 else reason[:160]
        self.errors[key] = self.errors.get(key, 0) + 1
        self._after_connect_step()

    def conn_lost(self, c: Conn, reason: str) -> None:
        """The server closed or broke a connection."""
        self.conn_failed(c, reason)

    def _after_connect_step(self) -> None:
        if self.phase != "connect":
            return
        self._fill_window()
        if self.ready + self.failed >= len(self.conns):
            self._connect_done()

    def _connect_deadline(self) -> None:
        if self.phase != "connect":
            return
        for c in self.conns:
            if c.state not in (READY, DEAD):
                self.conn_failed(c, f"connect timeout in state {STATE_NAMES[c.state]}")
        while self.pending:
            c = self.pending.pop()
            self.failed += 1
            self.errors["connect timeout before start"] = (
                self.errors.get("connect timeout before start", 0) + 1
            )
        self._connect_done()

    def _connect_done(self) -> None:
        if self.phase != "connect":
            return
        self._progress_once()
        self.phase = "connected"
        self.emit(
            {
                "ev": "connected",
                "ok": self.ready,
                "failed": self.failed,
                "errors": self.errors,
                "t_first_ns": self.t_first,
                "t_last_ready_ns": self.t_last_ready,
            }
        )

    # ------------------------------------------------------------------ publish phase
    def _cpu(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def _publish(self, cmd: dict[str, Any]) -> None:
        self.phase = "publish"
        self.pub_cmd = cmd
        self.pad = b',"pad":"' + b"x" * int(cmd.get("pad", 0)) + b'"' if cmd.get("pad") else b""
        self.publishers = [c for c in self.conns if c.is_pub and c.state == READY]
        start = int(cmd["start_ns"])
        self.pub_start = start
        self.pub_end = start + int(float(cmd["duration"]) * 1e9)
        self.publishing = True
        self.pub_count = 0
        if cmd["mode"] == "closed":
            self.closed_loop = True
            self.window = int(cmd["window"])
            self.max_messages = int(cmd["max_messages"])
            delay = max(0.0, (start - time.monotonic_ns()) / 1e9)
            self.loop.call_later(delay, self._closed_loop_start)
        else:
            self.rate = float(cmd["rate"])
            self.total = int(self.rate * float(cmd["duration"]))
            self.pub_rooms = [int(r) for r in cmd["pub_rooms"]]
            delay = max(0.0, (start - time.monotonic_ns()) / 1e9)
            self.loop.call_later(delay, self._open_tick)
        self.loop.call_at(
            self.loop.time()
            + (self.pub_end - time.monotonic_ns()) / 1e9
            + float(cmd["ack_timeout"]),
            self._ack_deadline,
        )

    def _publish_frame(self, c: Conn, room: int) -> None:
        self.pub_count += 1
        t = time.monotonic_ns()
        payload = (
            b'{"type":"publish","room":"'
            + self.room_names[room].encode()
            + b'","data":{"bt":'
            + str(t).encode()
            + b',"bp":'
            + str(self.pub_count).encode()
            + self.pad
            + b"}}"
        )
        c.write(masked_frame(payload))
        self.sent += 1

    def _open_tick(self) -> None:
        if not self.publishing:
            return
        now = time.monotonic_ns()
        if not self.publishers:
            self._publish_finished()
            return
        due = min(self.total, int((now - self.pub_start) * self.rate / 1e9) + 1)
        pubs = self.publishers
        rooms = self.pub_rooms
        while self.sent < due:
            i = self.sent
            self._publish_frame(pubs[i % len(pubs)], rooms[i % len(rooms)])
        if self.sent >= self.total or now >= self.pub_end:
            self._publish_finished()
            return
        self.loop.call_later(min(0.01, max(0.001, 1.0 / self.rate)), self._open_tick)

    def _closed_loop_start(self) -> None:
        for c in self.publishers:
            for _ in range(self.window):
                c.inflight += 1
                self._publish_frame(c, c.room)
        self.loop.call_later(
            max(0.0, (self.pub_end - time.monotonic_ns()) / 1e9), self._closed_loop_stop
        )

    def closed_loop_next(self, c: Conn) -> None:
        """A closed-loop publisher got one of its messages back: publish the next one."""
        if (
            self.publishing
            and c.state == READY
            and c.inflight < self.window
            and time.monotonic_ns() < self.pub_end
            and self.sent < self.max_messages
        ):
            c.inflight += 1
            self._publish_frame(c, c.room)

    def _closed_loop_stop(self) -> None:
        if self.publishing:
            self._publish_finished()

    def _publish_finished(self) -> None:
        self.publishing = False
        self.pub_stopped = time.monotonic_ns()
        self._maybe_published()

    def on_ack(self, c: Conn, p: bytes) -> None:
        """An ack for one of our publishes."""
        self.acked += 1
        sm = _SEQ_RE.search(p)
        if sm is None:
            self.count_error("ack without seq")
        else:
            seq = int(sm.group(1))
            room = c.room
            if room < 0:
                rm = re.search(rb'"room":\s*"([^"]*)"', p)
                name = rm.group(1).decode() if rm else ""
                room = self.room_index(name)
            if seq > self.acks.get(room, 0):
                self.acks[room] = seq
        self._maybe_published()

    def room_index(self, name: str) -> int:
        """Global index of a room name (publisher side)."""
        idx = getattr(self, "_rev", None)
        if idx is None:
            idx = self._rev = {v: k for k, v in self.room_names.items()}
        return int(idx.get(name, -1))

    def count_error(self, code: str) -> None:
        """An error frame from the server on a ready connection."""
        self.server_errors[code] = self.server_errors.get(code, 0) + 1
        self._maybe_published()

    def _maybe_published(self) -> None:
        if self.phase != "publish" or self.publishing:
            return
        if self.acked + sum(self.server_errors.values()) >= self.sent:
            self._emit_published(complete=True)

    def _ack_deadline(self) -> None:
        if self.phase == "publish":
            self.publishing = False
            self._emit_published(complete=False)

    def _emit_published(self, complete: bool) -> None:
        self._progress_once()  # the final counts, for the progress line
        self.phase = "published"
        self.emit(
            {
                "ev": "published",
                "sent": self.sent,
                "acked": self.acked,
                "errors": self.server_errors,
                "acks": {str(k): v for k, v in self.acks.items()},
                "complete": complete,
                "send_errors": self.send_errors,
            }
        )

    # ------------------------------------------------------------------ drain + collect
    def _drain(self, cmd: dict[str, Any]) -> None:
        final = {int(k): int(v) for k, v in cmd["final"].items()}
        self.final = final
        expected = 0
        for c in self.conns:
            if c.room >= 0 and (c.state == READY or c.sub_seq or c.next):
                f = final.get(c.room, 0)
                if c.next and f > c.sub_seq:
                    expected += f - c.sub_seq
        self.expected = expected
        self.phase = "drain"
        self.drain_deadline = time.monotonic_ns() + int(float(cmd["timeout"]) * 1e9)
        self._drain_check()

    def _drain_check(self) -> None:
        if self.phase != "drain":
            return
        now = time.monotonic_ns()
        if self.recv_unique >= self.expected or now >= self.drain_deadline:
            self._progress_once()
            self.phase = "drained"
            self.t_drained = now
            self.cpu_s = self._cpu() - self.rusage0
            self.emit(
                {
                    "ev": "drained",
                    "expected": self.expected,
                    "received": self.recv_unique,
                    "complete": self.recv_unique >= self.expected,
                }
            )
            return
        self.loop.call_later(0.01, self._drain_check)

    def _collect(self, cmd: dict[str, Any]) -> None:
        lost = 0
        for c in self.conns:
            if c.room < 0 or not c.next:
                continue
            f = self.final.get(c.room, 0) if hasattr(self, "final") else 0
            if c.missing:
                lost += sum(1 for s in c.missing if s <= f)
            if f > c.next - 1:
                lost += f - (c.next - 1)
        prefix = os.path.join(cmd["dir"], f"gen{self.cfg['gen_id']}")
        with open(prefix + ".lat", "wb") as fh:
            self.lat.tofile(fh)
        keys = array("q")
        vals = array("q")
        for k, (t, r, n) in self.fanout.items():
            keys.append(k)
            vals.extend((t, r, n))
        with open(prefix + ".fo", "wb") as fh:
            keys.tofile(fh)
        with open(prefix + ".fov", "wb") as fh:
            vals.tofile(fh)
        if not hasattr(self, "cpu_s"):
            self.cpu_s = self._cpu() - self.rusage0
            self.t_drained = time.monotonic_ns()
        wall = (self.t_drained - self.wall0) / 1e9 if self.wall0 else 0.0
        self.emit(
            {
                "ev": "stats",
                "prefix": prefix,
                "deliveries": self.deliveries,
                "unique": self.recv_unique,
                "duplicates": self.duplicates,
                "out_of_order": self.out_of_order,
                "lost": lost,
                "lost_connections": self.lost_conns,
                "errors": self.errors,
                "server_errors": self.server_errors,
                "user_clock": self.user_clock,
                "cpu_s": getattr(self, "cpu_s", 0.0),
                "wall_s": wall,
                "clock_drift_ns": clock_offset_ns() - self.offset_start,
                "close_send_errors": self.close_send_errors,
                "send_errors": self.send_errors,
            }
        )

    def _close_all(self) -> None:
        for c in self.conns:
            c.close()
        self._done = True
        self.emit({"ev": "closed", "close_send_errors": self.close_send_errors})
        self.loop.stop()

    def run(self) -> None:
        """Serve controller commands until ``close``."""
        os.set_blocking(0, False)
        self.loop.add_reader(0, self._on_stdin)
        self.emit({"ev": "hello", "pid": os.getpid()})
        self.loop.run_forever()


def main() -> int:
    """Generator process entry point.

    Setting ``BENCH_GENERATOR_PROFILE=DIR`` writes a cProfile of each generator process
    to ``DIR/generator-PID.prof`` (for tuning the generator itself).
    """
    prof_dir = os.environ.get("BENCH_GENERATOR_PROFILE")
    if prof_dir:
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(Generator().run)
        prof.dump_stats(os.path.join(prof_dir, f"generator-{os.getpid()}.prof"))
        return 0
    Generator().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
