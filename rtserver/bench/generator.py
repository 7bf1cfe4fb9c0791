"""Load generator process: holds up to ~15,000 WebSocket client connections.

Run by the controller as ``python -m rtserver.bench.generator``; it reads one JSON command per
line on stdin and writes one JSON event per line on stdout (logs go to stderr).

Design (lean on purpose, so the generator measures the server and not itself):

* raw non-blocking sockets driven by uvloop ``add_reader``/``add_writer`` callbacks:
  no task, future or protocol object per connection, one small ``__slots__`` object;
* hand-written handshake and frame parser (:mod:`rtserver.bench.wsproto`) in
  :mod:`rtserver.bench.connection`; client frames masked;
* ``recvmsg`` with ``SO_TIMESTAMPNS``: the kernel's receive timestamp (CLOCK_REALTIME)
  is converted to CLOCK_MONOTONIC with an offset measured in this process, so the
  latency ``receive - publish`` is not inflated by the generator's own lag;
* message fields are read with two byte regexes (``"seq":N`` and ``"bt":N``), no JSON
  decoding on the delivery path.

Commands: ``setup``, ``publish``, ``drain``, ``collect``, ``close`` (see the controller
in :mod:`rtserver.bench.runner`).
"""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from array import array
from typing import Any

import orjson
import uvloop

from rtserver.bench.capacity import FD_RESERVE, raise_nofile
from rtserver.bench.connection import DEAD, READY, STATE_NAMES, Conn, DeliveryCounters
from rtserver.bench.tokens import mint
from rtserver.bench.wsproto import masked_frame

__all__ = ["Generator", "clock_offset_ns", "main"]

_SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
_ROOM_RE = re.compile(rb'"room":\s*"([^"]*)"')


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


class Generator(DeliveryCounters):
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
        super().__init__()
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
        self.batch_s = 0.0
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
        raise_nofile(len(conns_spec) + FD_RESERVE)
        for room, user, is_pub in conns_spec:
            tok = tokens.get(user)
            if tok is None:
                tok = tokens[user] = mint(secret, user, ttl)
            c = Conn(self, int(room), rooms.get(int(room), ""), bool(is_pub))
            c.path = path + ("&" if "?" in path else "?") + "token=" + tok
            self.conns.append(c)
        self.pending = list(reversed(self.conns))
        self.phase = "connect"
        batch_ms = float(cmd.get("recv_batch_ms", 0.0))
        if batch_ms > 0:
            self.batch_s = batch_ms / 1000.0
            self.loop.call_soon(self._pace)
        self.t_first = time.monotonic_ns()
        self.loop.call_later(float(cmd["connect_timeout"]), self._connect_deadline)
        self._progress()
        self._fill_window()
        if not self.conns:
            self._connect_done()

    def _pace(self) -> None:
        """Sleep ``recv_batch_ms`` once per loop iteration, then poll without blocking.

        A receiver that waits in epoll is woken by every frame the server sends, and on
        loopback the server's ``send()`` pays for that wakeup (about a third of its send
        time at 100,000 connections, measured with perf); one that polls once per
        interval takes the frames that arrived meanwhile in one go, without a wakeup per
        frame. Latency is unchanged: it is the kernel's receive timestamp
        (``SO_TIMESTAMPNS``), taken when the frame arrived, not when it was read.
        """
        if self._done:
            return
        time.sleep(self.batch_s)
        self.loop.call_soon(self._pace)

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
                rm = _ROOM_RE.search(p)
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
