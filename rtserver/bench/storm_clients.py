"""The reconnect-storm scenario's generator process: reconnecting receivers or publishers.

Run by :mod:`rtserver.bench.storm` as ``python -m rtserver.bench.storm_clients``; like
:mod:`rtserver.bench.generator` it reads one JSON command per line on stdin and writes
one JSON event per line on stdout (logs on stderr). A process has one role:

* ``recv``: clients, each subscribed to one room. Every client remembers its room's
  ``(epoch, seq)``; after any loss it reconnects after the backoff delay of the run's
  policy and resubscribes with ``since``. It checks its stream (next seq, gaps,
  duplicates, reordering, the payload counter ``n``) and records, for the current
  storm, when it went down and when it was back: subscribed again and, after
  ``recovered: true``, every replayed message received.
* ``pub``: publisher connections (no subscription), each owning a share of the rooms,
  publishing ``rate`` messages per second per room with ``data.n`` (the room's payload
  counter), an idempotency ``key`` and an ``id``; an unacknowledged publish is sent
  again with the same key after a reconnect. Acks are kept per server generation
  (the controller starts a new one when the server is restarted: new epochs).

The backoff policy is the SDK's (clients/js/src/backoff.js): attempt ``a`` (from 0)
waits ``random(0, min(max, min * 2**a))`` (``full``) or exactly
``min(max, min * 2**a)`` (``none``); the attempt counter goes back to 0 after a
connection that lived ``stable`` seconds (and at the start of each storm). Every
connection attempt after a storm's fault is counted.
"""

from __future__ import annotations

import os
import random
import re
import resource
import sys
import time
from typing import Any

import orjson
import uvloop

from rtserver.bench.capacity import FD_RESERVE, raise_nofile
from rtserver.bench.connection import DEAD, READY, STATE_NAMES, SUBSCRIBING, Conn, DeliveryCounters
from rtserver.bench.storm_client import Backoff, SClient
from rtserver.bench.storm_publisher import Publishing
from rtserver.bench.tokens import mint
from rtserver.bench.wsproto import masked_frame

__all__ = ["StormProcess", "main"]

_TYPE_RE = re.compile(rb'"type":"(\w+)"')
_SEQ_RE = re.compile(rb'"seq":(\d+)')
_N_RE = re.compile(rb'"data":\{"n":(\d+)')
_ID_RE = re.compile(rb'"id":"([^"]*)"')
_CODE_RE = re.compile(rb'"code":"([^"]*)"')
_WORKER_RE = re.compile(rb'"worker":(\d+)')
_CLOSE_RE = re.compile(r"code (\d+)")


class StormProcess(DeliveryCounters, Publishing):
    """One storm generator process (role ``recv`` or ``pub``); the ``ConnOwner`` of its sockets."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        super().__init__()
        self.offset = 0
        self.closed_loop = False
        self.clients: list[SClient] = []
        self.by_conn: dict[int, SClient] = {}
        self.cfg: dict[str, Any] = {}
        self.role = "recv"
        self.backoff = Backoff(0.5, 20.0, random.Random(1))
        self.stopping = False
        self.announced_ready = False
        self.storm: dict[str, Any] | None = None
        self._stdin = b""
        self.init_publishing()
        self.check_cmd: dict[str, Any] | None = None
        self.new_storm_counters()

    # ------------------------------------------------------------ control channel
    def emit(self, event: dict[str, Any]) -> None:
        """One JSON event line to the controller."""
        os.write(1, orjson.dumps(event) + b"\n")

    def log(self, event: str, **fields: Any) -> None:
        """A structured line on stderr."""
        sys.stderr.write(orjson.dumps({"logger": "rtserver.bench.storm_clients",
                                       "event": event, **fields}).decode() + "\n")

    def _on_stdin(self) -> None:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            self.log("controller_gone", message="stdin closed; closing every connection")
            self._close_all()
            return
        self._stdin += chunk
        while b"\n" in self._stdin:
            line, self._stdin = self._stdin.split(b"\n", 1)
            if line.strip():
                self.command(orjson.loads(line))

    def command(self, cmd: dict[str, Any]) -> None:
        """Dispatch one controller command."""
        name = cmd["cmd"]
        if name == "setup":
            self._setup(cmd)
        elif name == "policy":
            self.backoff.jitter = str(cmd["jitter"])
            self.emit({"ev": "policy", "jitter": self.backoff.jitter})
        elif name == "fault":
            self._fault(cmd)
        elif name == "publish":
            self.set_publishing(bool(cmd["on"]))
        elif name == "generation":
            self.generation += 1
            self.acks[self.generation] = {}
            self.emit({"ev": "generation", "generation": self.generation})
        elif name == "check":
            self.check_cmd = cmd
            self.check_deadline = time.monotonic() + float(cmd["timeout"])
            self._check()
        elif name == "rebalance":
            self._rebalance(int(cmd["workers"]))
        elif name == "close":
            self._close_all()
        else:
            raise SystemExit(f"unknown storm command {name!r}. Required action: fix "
                             "rtserver.bench.storm")

    def _progress(self) -> None:
        if self.stopping:
            return
        ready = 0
        workers: dict[int, int] = {}
        for c in self.clients:
            if self._is_ready(c):
                ready += 1
                workers[c.worker] = workers.get(c.worker, 0) + 1
        st = self.storm or {}
        self.emit({"ev": "progress", "ready": ready, "total": len(self.clients),
                   "affected": st.get("affected", 0), "back": st.get("back", 0),
                   "attempts": st.get("attempts", 0), "deliveries": self.deliveries,
                   "sent": self.sent, "errors": sum(self.s_fail.values()),
                   "workers": {str(w): n for w, n in workers.items()}})
        self.loop.call_later(float(self.cfg.get("progress_interval", 0.25)), self._progress)

    # ------------------------------------------------------------ setup
    def _setup(self, cmd: dict[str, Any]) -> None:
        self.cfg = cmd
        self.role = str(cmd["role"])
        self.backoff = Backoff(float(cmd["min_delay"]), float(cmd["max_delay"]),
                               random.Random(int(cmd["seed"])))
        self.backoff.jitter = str(cmd["jitter"])
        secret = os.environ["RTSERVER_JWT_SECRET"]
        ttl = int(cmd["token_ttl"])
        base = str(cmd["path"])
        specs = cmd["clients"]
        raise_nofile(len(specs) + FD_RESERVE)
        for i, (room_or_rooms, user) in enumerate(specs):
            tok = mint(secret, str(user), ttl)
            path = base + ("&" if "?" in base else "?") + "token=" + tok
            if self.role == "pub":
                cl = SClient(i, "", path)
                cl.rooms = list(room_or_rooms)
                for r in cl.rooms:
                    self.counters[r] = 0
            else:
                cl = SClient(i, str(room_or_rooms), path)
            self.clients.append(cl)
        self.rate = float(cmd.get("rate", 0.0))
        self.pending = list(reversed(self.clients))
        self.connecting = 0
        self._progress()
        self._fill_window()
        self._maybe_all_ready()

    def _rebalance(self, workers: int) -> None:
        """Reconnect (paced, outside any storm) enough clients of the busiest worker that
        the workers hold about equal shares again; ``ready`` when all are back."""
        per: dict[int, list[SClient]] = {}
        for c in self.clients:
            if self._is_ready(c):
                per.setdefault(c.worker, []).append(c)
        heavy = max(per.values(), key=len, default=[])
        excess = len(heavy) - len(self.clients) / workers
        todo = heavy[:min(len(heavy), max(0, round(2 * excess)))]
        for cl in todo:
            sock = cl.conn
            assert sock is not None
            self.by_conn.pop(id(sock), None)
            sock.close()
            cl.conn = None
            cl.worker = -1
            cl.ready_at = 0.0
        self.announced_ready = False
        self.pending = list(reversed(todo))
        self.connecting = 0
        self.log("rebalance", reconnecting=len(todo), of_worker_clients=len(heavy))
        self._fill_window()
        self._maybe_all_ready()

    def _fill_window(self) -> None:
        window = int(self.cfg["connect_window"])
        while self.pending and self.connecting < window:
            cl = self.pending.pop()
            self.connecting += 1
            self.connect(cl)

    def _maybe_all_ready(self) -> None:
        if self.announced_ready or self.pending:
            return
        if all(self._is_ready(c) for c in self.clients):
            self.announced_ready = True
            self.emit({"ev": "ready", "clients": len(self.clients),
                       "workers": sorted({c.worker for c in self.clients})})

    # ------------------------------------------------------------ connections
    def connect(self, cl: SClient) -> None:
        """Open a new socket for ``cl`` (one counted attempt during a storm)."""
        cl.timer = None
        if self.stopping or cl.conn is not None:
            return
        c = Conn(self, 0, "", self.role == "pub")
        c.hook = self.frame
        cl.conn = c
        cl.gen = self.generation
        self.by_conn[id(c)] = cl
        if self.storm is not None and cl.affected:
            cl.attempts += 1
            self.storm["attempts"] += 1
        c.start(str(self.cfg["host"]), int(self.cfg["port"]), cl.path, self.cfg.get("source"))
        if cl.conn is c:
            self.loop.call_later(float(self.cfg["handshake_timeout"]), self._timeout, cl, c)

    def _timeout(self, cl: SClient, c: Conn) -> None:
        if cl.conn is c and c.state != READY and c.state != DEAD:
            self.conn_failed(c, f"no answer within {self.cfg['handshake_timeout']} s")

    def conn_ready(self, c: Conn) -> None:
        """Authenticated (publishers) or subscribed (receivers)."""
        c.state = READY
        cl = self.by_conn[id(c)]
        first = cl.ready_at == 0.0
        cl.ready_at = time.monotonic()
        if first:
            self.connecting -= 1
            self._fill_window()
            self._maybe_all_ready()
        if self.role == "pub":
            for frame in [f for _r, f in cl.inflight.values()]:
                self._write_publish(cl, frame)
            self._mark_back(cl)
            self._maybe_paused()

    def conn_failed(self, c: Conn, reason: str) -> None:
        """A connect, handshake or protocol failure."""
        self._lost(c, reason)

    def conn_lost(self, c: Conn, reason: str) -> None:
        """The server closed or broke the connection."""
        self._lost(c, reason)

    def _lost(self, c: Conn, reason: str) -> None:
        state = c.state
        c.close()
        cl = self.by_conn.pop(id(c), None)
        if cl is None or cl.conn is not c:
            return
        cl.conn = None
        cl.worker = -1
        m = _CLOSE_RE.search(reason)
        key = f"close {m.group(1)}" if m else reason.split(" in state")[0][:80]
        if state == READY:
            self.s_close[key] = self.s_close.get(key, 0) + 1
            if time.monotonic() - cl.ready_at >= float(self.cfg["stable_after"]):
                cl.attempt = 0
        else:
            k = f"{key} ({STATE_NAMES[state]})"
            self.s_fail[k] = self.s_fail.get(k, 0) + 1
        if cl.ready_at == 0.0:
            self.connecting -= 1
            self.pending.append(cl)  # the initial connect goes on until the deadline
            self.loop.call_later(0.2, self._fill_window)
            return
        st = self.storm
        if st is not None and not cl.affected:
            cl.affected = True
            cl.t_down = time.monotonic_ns()
            st["affected"] += 1
        elif st is not None and cl.t_back:
            # Lost again after being back: the storm is not over for this client.
            cl.t_back = 0
            st["back"] -= 1
            st["relapses"] += 1
        if not self.stopping:
            delay = self.backoff.delay(cl.attempt)
            cl.attempt += 1
            cl.timer = self.loop.call_later(delay, self.connect, cl)

    def count_error(self, code: str) -> None:
        """An error code (counted)."""
        self.s_errors[code] = self.s_errors.get(code, 0) + 1

    def on_ack(self, c: Conn, p: bytes) -> None:
        """Unused: acks arrive through :meth:`frame`."""

    def closed_loop_next(self, c: Conn) -> None:
        """Unused."""

    # ------------------------------------------------------------ storms
    def new_storm_counters(self) -> None:
        """Reset the per-storm counters."""
        self.s_fail: dict[str, int] = {}
        self.s_close: dict[str, int] = {}
        self.s_errors: dict[str, int] = {}
        self.s_recovered = 0
        self.s_replayed = 0
        self.s_not_recovered: dict[str, int] = {}
        self.s_explicit_skipped = 0
        self.s_lost_silent = 0
        self.s_payload_repeats = 0
        self.s_epoch_last: list[int] = []
        self.duplicates = 0
        self.out_of_order = 0

    def _fault(self, cmd: dict[str, Any]) -> None:
        self.new_storm_counters()
        worker = cmd.get("worker")
        expected = sum(1 for c in self.clients
                       if self._is_ready(c) and (worker is None or c.worker == int(worker)))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.storm_cpu0 = (ru.ru_utime + ru.ru_stime, time.monotonic())
        self.storm = {"kind": cmd["kind"], "affected": 0, "back": 0, "attempts": 0,
                      "relapses": 0, "expected": expected, "announced": False}
        for c in self.clients:
            c.affected = False
            c.t_down = c.t_back = 0
            c.attempts = 0
            c.attempt = 0  # every client was stable before the storm
        self.emit({"ev": "fault_ack", "expected": expected})
        if expected == 0:
            self.storm["announced"] = True
            self.emit({"ev": "back", "affected": 0})

    def _mark_back(self, cl: SClient) -> None:
        st = self.storm
        if st is None or not cl.affected or cl.t_back:
            return
        cl.t_back = time.monotonic_ns()
        st["back"] += 1
        if (not st["announced"] and st["affected"] >= st["expected"]
                and st["back"] >= st["affected"]):
            st["announced"] = True
            self.emit({"ev": "back", "affected": st["affected"]})

    def _check(self) -> None:
        """After a storm: every stream at its room's final acked seq (or the deadline)."""
        cmd = self.check_cmd
        if cmd is None:
            return
        finals: dict[str, int] = cmd["finals"]
        behind = sum(1 for c in self.clients if c.next - 1 < finals.get(c.room, 0))
        if behind and time.monotonic() < self.check_deadline:
            self.loop.call_later(0.05, self._check)
            return
        self.check_cmd = None
        before: dict[str, int] | None = cmd.get("before")
        lost_tail = 0
        lost = self.s_lost_silent
        for c in self.clients:
            f = finals.get(c.room, 0)
            if c.next - 1 < f:
                lost += f - (c.next - 1)
            if c.missing:
                lost += len(c.missing)
                c.missing = None
        if before is not None:
            for c in self.clients:
                if c.last_before >= 0:
                    lost_tail += max(0, before.get(c.room, 0) - c.last_before)
        st = self.storm or {}
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = self.storm_cpu0
        cpu_pct = 100.0 * (ru.ru_utime + ru.ru_stime - cpu0) / max(1e-9, time.monotonic() - wall0)
        back_ns = [c.t_back - int(cmd["t_fault_ns"]) for c in self.clients
                   if c.affected and c.t_back]
        self.emit({
            "ev": "checked", "behind": behind, "affected": st.get("affected", 0),
            "expected": st.get("expected", 0), "back": len(back_ns), "back_ns": back_ns,
            "attempts": st.get("attempts", 0),
            "attempts_max": max((c.attempts for c in self.clients), default=0),
            "relapses": st.get("relapses", 0), "failures": self.s_fail, "closes": self.s_close,
            "server_errors": self.s_errors, "recovered": self.s_recovered,
            "replayed": self.s_replayed, "not_recovered": self.s_not_recovered,
            "explicit_skipped": self.s_explicit_skipped, "lost": lost,
            "acked_not_delivered_before_epoch_change": lost_tail,
            "duplicates": self.duplicates, "out_of_order": self.out_of_order,
            "payload_repeats": self.s_payload_repeats, "deliveries": self.deliveries,
            "cpu_pct": cpu_pct})
        self.storm = None
        for c in self.clients:
            c.last_before = -1

    # ------------------------------------------------------------ frames
    def frame(self, c: Conn, p: bytes) -> None:
        """Every text frame after the handshake."""
        m = _TYPE_RE.search(p)
        kind = m.group(1) if m is not None else b""
        if kind == b"message":
            cl = self.by_conn.get(id(c))
            if cl is not None:
                self._message(cl, p)
        elif kind == b"ack":
            self._ack(c, p)
        elif kind == b"subscribed":
            cl = self.by_conn.get(id(c))
            if cl is not None:
                self._subscribed(c, cl, orjson.loads(p))
        elif kind == b"authenticated":
            cl = self.by_conn.get(id(c))
            if cl is None:
                return
            if self.role == "pub":
                self.conn_ready(c)
                return
            c.state = SUBSCRIBING
            item: dict[str, Any] = {"type": "subscribe", "room": cl.room, "id": "s"}
            cl.since_sent = cl.epoch is not None
            if cl.epoch is not None:
                item["since"] = {"epoch": cl.epoch, "seq": cl.next - 1}
            c.write(masked_frame(orjson.dumps(item)))
        elif kind == b"connection":
            cl = self.by_conn.get(id(c))
            wm = _WORKER_RE.search(p)
            if cl is not None and wm is not None:
                cl.worker = int(wm.group(1))
        elif kind == b"error":
            self._error(c, p)
        elif kind == b"gap":
            cl = self.by_conn.get(id(c))
            if cl is not None:
                d = orjson.loads(p)
                self.s_not_recovered["gap " + str(d.get("reason"))] = (
                    self.s_not_recovered.get("gap " + str(d.get("reason")), 0) + 1)
                if d["epoch"] != cl.epoch:
                    self._epoch_change(cl, str(d["epoch"]))
                self.s_explicit_skipped += max(0, int(d["to_seq"]) - (cl.next - 1))
                cl.next = max(cl.next, int(d["to_seq"]) + 1)
        elif kind not in (b"heartbeat", b"pong"):
            self.count_error("unexpected " + kind.decode(errors="replace"))

    def _epoch_change(self, cl: SClient, epoch: str) -> None:
        if cl.missing:
            self.s_lost_silent += len(cl.missing)
            cl.missing = None
        cl.last_before = cl.next - 1
        cl.epoch = epoch
        cl.epoch_changes += 1

    def _subscribed(self, c: Conn, cl: SClient, d: dict[str, Any]) -> None:
        seq = int(d["seq"])
        epoch = str(d["epoch"])
        rec = d.get("recovered")
        cl.sub_seq = seq
        if rec is True and cl.since_sent:
            if epoch != cl.epoch:
                self.count_error("recovered:true with another epoch")
            self.s_recovered += 1
            self.s_replayed += int(d.get("replayed") or 0)
        else:
            if rec is False:
                reason = str(d.get("reason"))
                self.s_not_recovered[reason] = self.s_not_recovered.get(reason, 0) + 1
            elif cl.since_sent:
                self.count_error("subscribed without recovered after since")
            if cl.epoch is not None and epoch != cl.epoch:
                self._epoch_change(cl, epoch)
            elif cl.epoch is not None:
                self.s_explicit_skipped += max(0, seq - (cl.next - 1))
            cl.epoch = epoch
            cl.next = seq + 1
        c.state = READY
        self.conn_ready(c)
        if cl.next - 1 >= seq:
            self._mark_back(cl)

    def _message(self, cl: SClient, p: bytes) -> None:
        sm = _SEQ_RE.search(p, p.rfind(b'"seq":'))
        nm = _N_RE.search(p)
        if sm is None or nm is None:
            self.count_error("message without seq or data.n")
            return
        seq = int(sm.group(1))
        n = int(nm.group(1))
        self.deliveries += 1
        nxt = cl.next
        if seq == nxt:
            cl.next = nxt + 1
        elif seq > nxt:
            if cl.missing is None:
                cl.missing = set()
            cl.missing.update(range(nxt, seq))
            cl.next = seq + 1
        elif cl.missing is not None and seq in cl.missing:
            cl.missing.discard(seq)
            self.out_of_order += 1
        else:
            self.duplicates += 1
        if n <= cl.last_n:
            self.s_payload_repeats += 1
        else:
            cl.last_n = n
        if not cl.t_back and cl.affected and cl.conn is not None and cl.conn.state == READY \
                and cl.next - 1 >= cl.sub_seq:
            self._mark_back(cl)

    def _error(self, c: Conn, p: bytes) -> None:
        cm = _CODE_RE.search(p)
        code = cm.group(1).decode() if cm else "unknown"
        self.count_error(code)
        cl = self.by_conn.get(id(c))
        if cl is None:
            return
        im = _ID_RE.search(p)
        msg_id = im.group(1).decode() if im else ""
        if msg_id == "s":
            # The subscribe was refused (bus_unavailable while a respawned worker joins the
            # hub, ...): a new connection after the backoff delay subscribes again.
            self.conn_failed(c, f"subscribe refused: {code}")
        elif self.role == "pub" and msg_id in cl.inflight:
            self.pub_errors[code] = self.pub_errors.get(code, 0) + 1
            _room, frame = cl.inflight[msg_id]
            self.loop.call_later(self.backoff.delay(0), self._retry, cl, c, frame)

    # ------------------------------------------------------------ end
    def _close_all(self) -> None:
        self.stopping = True
        for cl in self.clients:
            if cl.conn is not None:
                self.by_conn.pop(id(cl.conn), None)
                cl.conn.close()
                cl.conn = None
        self.emit({"ev": "closed", "close_send_errors": self.close_send_errors})
        self.loop.stop()

    def run(self) -> None:
        """Serve controller commands until ``close``."""
        os.set_blocking(0, False)
        self.loop.add_reader(0, self._on_stdin)
        self.emit({"ev": "hello", "pid": os.getpid()})
        self.loop.run_forever()


def main() -> int:
    """Process entry point."""
    StormProcess().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
