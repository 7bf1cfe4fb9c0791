"""The chaos scenario's clients: reconnecting, stream-tracking bench connections.

Every logical client owns a :class:`~rtserver.bench.streams.StreamTracker`; each of
its sockets is a :class:`~rtserver.bench.connection.Conn` whose text frames go to
:meth:`ChaosClients.frame` (JSON-decoded: the rates are small). After any loss
(server close, RST, slow-consumer 1013, a killed worker) the client reconnects
after a full-jitter backoff delay and resubscribes every room in one
``subscribe`` with ``since``. Publishers are clients too (subscribed to every
room); each publication carries a unique payload id, used as its idempotency
``key``, and is sent again (same key) until it is acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from rtserver.bench.connection import DEAD, READY, SUBSCRIBING, Conn, DeliveryCounters
from rtserver.bench.streams import FullJitterBackoff, StreamTracker
from rtserver.bench.wsproto import masked_frame

__all__ = ["ChaosClients", "Client", "Endpoint"]

_CODE_RE = re.compile(r"code (\d+)")


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: host, port and a label (node name)."""

    host: str
    port: int
    label: str


@dataclass
class Client:
    """One logical client (it outlives its sockets)."""

    index: int
    endpoint: Endpoint
    path: str
    tracker: StreamTracker
    is_pub: bool = False
    rcvbuf: int = 0
    conn: Conn | None = None
    worker: int | None = None
    connects: int = 0
    #: Why the latest socket ended (``close 1013``, an RST, EOF, ...).
    last_close: str = ""
    #: payload id -> (room, frame) of publishes sent and not yet acknowledged.
    inflight: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class ChaosClients(DeliveryCounters):
    """All clients of one chaos run; implements the ``ConnOwner`` protocol of ``Conn``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, backoff: FullJitterBackoff,
                 retry: FullJitterBackoff, rng: random.Random) -> None:
        """``backoff`` paces reconnects, ``retry`` refused subscribes and publishes (each
        counts its attempts); ``rng`` picks publishers."""
        self._loop = loop
        self.backoff = backoff
        self.retry = retry
        self.rng = rng
        self.clients: list[Client] = []
        self.by_conn: dict[int, Client] = {}
        self.stopping = False
        # ConnOwner counters (the measuring fast path is not used by hooked conns).
        super().__init__()
        # Scenario counters.
        self.sent: dict[str, str] = {}  # payload id -> room
        self.acks: dict[str, tuple[str, int]] = {}
        #: payload id -> (epoch, seq) where its publisher received it back.
        self.own_positions: dict[str, tuple[str, int]] = {}
        self.publish_attempts = 0
        self.publish_errors: dict[str, int] = {}
        self.skipped_publishes = 0
        self.closes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.unexpected: dict[str, int] = {}
        self.changed = asyncio.Event()
        self._n = 0

    # ------------------------------------------------------------ ConnOwner protocol
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The scenario's event loop."""
        return self._loop

    @property
    def offset(self) -> int:
        """Unused (no latency is measured); the protocol needs it."""
        return 0

    @property
    def closed_loop(self) -> bool:
        """Never closed-loop publishing."""
        return False

    def conn_ready(self, c: Conn) -> None:
        """Every room of the connection answered its subscribe."""
        c.state = READY
        cl = self.by_conn[id(c)]
        self.backoff.succeeded(cl.index)
        self.retry.succeeded(cl.index)
        for pid, (_room, frame) in list(cl.inflight.items()):
            self._send_publish(cl, pid, frame)
        self._notify()

    def conn_failed(self, c: Conn, reason: str) -> None:
        """A handshake, send or protocol failure: the socket is closed, reconnect."""
        c.close()
        self._lost(c, reason)

    def conn_lost(self, c: Conn, reason: str) -> None:
        """The server closed or broke the connection: reconnect."""
        c.close()
        self._lost(c, reason)

    def count_error(self, code: str) -> None:
        """An error code (counted)."""
        self.errors[code] = self.errors.get(code, 0) + 1

    def on_ack(self, c: Conn, p: bytes) -> None:
        """Unused: acks arrive through :meth:`frame`."""

    def closed_loop_next(self, c: Conn) -> None:
        """Unused (open-loop publishing only)."""

    # ------------------------------------------------------------ connections
    def add(self, client: Client) -> None:
        """Register a client (connected by :meth:`connect`)."""
        self.clients.append(client)

    def connect(self, cl: Client) -> None:
        """Open a new socket for ``cl``."""
        if self.stopping or cl.conn is not None:
            return
        c = Conn(self, 0, "", cl.is_pub)
        c.hook = self.frame
        c.path = cl.path
        cl.conn = c
        cl.connects += 1
        self.by_conn[id(c)] = cl
        c.start(cl.endpoint.host, cl.endpoint.port, cl.path, None, cl.rcvbuf)

    def _lost(self, c: Conn, reason: str) -> None:
        cl = self.by_conn.pop(id(c), None)
        if cl is None:
            return
        m = _CODE_RE.search(reason)
        key = f"close {m.group(1)}" if m else reason.split(":")[0][:80]
        self.closes[key] = self.closes.get(key, 0) + 1
        cl.last_close = key
        cl.conn = None
        cl.worker = None
        cl.tracker.connection_lost()
        self._notify()
        if not self.stopping:
            self._loop.call_later(self.backoff.next_delay(cl.index), self.connect, cl)

    def abort(self, cl: Client) -> bool:
        """Reset ``cl``'s TCP connection (RST); it reconnects with ``since``."""
        c = cl.conn
        if c is None or c.state == DEAD:
            return False
        c.abort()
        self._lost(c, "aborted by the scenario (RST)")
        return True

    def ready(self, cl: Client) -> bool:
        """Connected with every room subscribed."""
        return (cl.conn is not None and cl.conn.state == READY
                and len(cl.tracker.subscribed) == len(cl.tracker.rooms))

    def all_ready(self) -> bool:
        """Every client is connected with every room subscribed."""
        return all(self.ready(cl) for cl in self.clients)

    def close_all(self) -> None:
        """Stop reconnecting and close every socket."""
        self.stopping = True
        for cl in self.clients:
            if cl.conn is not None:
                c = cl.conn
                self.by_conn.pop(id(c), None)
                c.close()
                cl.conn = None
                cl.tracker.connection_lost()

    def _notify(self) -> None:
        self.changed.set()

    # ------------------------------------------------------------ frames
    def frame(self, c: Conn, p: bytes) -> None:
        """Every text frame of a hooked connection after the handshake."""
        cl = self.by_conn.get(id(c))
        if cl is None:
            return
        d = orjson.loads(p)
        kind = d.get("type")
        tr = cl.tracker
        if kind == "message":
            pid = d["data"]["p"]
            room = d["room"]
            tr.on_message(room, int(d["seq"]), pid)
            pos = tr.position(room)
            if cl.is_pub and pos is not None:
                self.own_positions.setdefault(pid, pos)
            self._notify()
        elif kind == "ack":
            self._on_ack(cl, d)
        elif kind == "subscribed":
            tr.on_subscribed(d)
            self._maybe_ready(c, cl)
        elif kind == "gap":
            tr.on_gap(d)
            self._notify()
        elif kind == "error":
            self._on_error(c, cl, d)
        elif kind == "authenticated":
            c.state = SUBSCRIBING
            c.write(masked_frame(tr.subscribe_frame()))
        elif kind == "connection":
            cl.worker = int(d["worker"])
        elif kind not in ("heartbeat", "pong"):
            self.unexpected[str(kind)] = self.unexpected.get(str(kind), 0) + 1

    def _maybe_ready(self, c: Conn, cl: Client) -> None:
        if not cl.tracker.pending and c.state == SUBSCRIBING:
            self.conn_ready(c)
        else:
            self._notify()

    def _on_error(self, c: Conn, cl: Client, d: dict[str, Any]) -> None:
        code = str(d.get("code"))
        self.count_error(code)
        room = d.get("room")
        msg_id = d.get("id")
        if isinstance(msg_id, str) and msg_id.startswith("sub"):
            # A subscribe was refused: one room of it (an error naming the room) or the
            # whole frame (no room: e.g. bus_unavailable while the bus reconnects). Ask
            # again for those rooms, with since, after a backoff delay.
            failed = [str(room)] if room is not None else sorted(cl.tracker.pending)
            for r in failed:
                cl.tracker.subscribe_failed(r)
            self._loop.call_later(self.retry.next_delay(cl.index), self._resubscribe, cl, c)
            self._maybe_ready(c, cl)
        elif isinstance(msg_id, str) and msg_id in cl.inflight:
            self.publish_errors[code] = self.publish_errors.get(code, 0) + 1
            self._loop.call_later(self.retry.next_delay(cl.index), self._retry, cl, msg_id)
        else:
            self.unexpected[f"error {code}"] = self.unexpected.get(f"error {code}", 0) + 1

    def _resubscribe(self, cl: Client, c: Conn) -> None:
        if cl.conn is not c or c.state == DEAD:
            return  # that socket is gone; the new one subscribes everything anyway
        missing = [r for r in cl.tracker.rooms
                   if r not in cl.tracker.subscribed and r not in cl.tracker.pending]
        if missing:
            c.write(masked_frame(cl.tracker.subscribe_frame(missing, "sub-retry")))

    # ------------------------------------------------------------ publishing
    def publish(self, cl: Client, room: str, pad: int = 0) -> str:
        """Publish a new payload to ``room`` from publisher ``cl``; returns its id."""
        self._n += 1
        pid = f"m{self._n}"
        data: dict[str, Any] = {"p": pid}
        if pad:
            data["pad"] = "x" * pad
        frame = orjson.dumps({"type": "publish", "room": room, "data": data, "key": pid,
                              "id": pid})
        self.sent[pid] = room
        cl.inflight[pid] = (room, frame)
        if cl.conn is not None and cl.conn.state == READY:
            self._send_publish(cl, pid, frame)
        return pid

    def publish_random(self, rooms: list[str]) -> str | None:
        """One publication from a random ready publisher to a random room."""
        pubs = [cl for cl in self.clients if cl.is_pub and self.ready(cl)]
        if not pubs:
            self.skipped_publishes += 1
            return None
        return self.publish(self.rng.choice(pubs), self.rng.choice(rooms))

    def _send_publish(self, cl: Client, pid: str, frame: bytes) -> None:
        assert cl.conn is not None
        self.publish_attempts += 1
        cl.conn.write(masked_frame(frame))

    def _retry(self, cl: Client, pid: str) -> None:
        item = cl.inflight.get(pid)
        if item is not None and cl.conn is not None and cl.conn.state == READY:
            self._send_publish(cl, pid, item[1])
        # Not connected: conn_ready sends every inflight publish again.

    def _on_ack(self, cl: Client, d: dict[str, Any]) -> None:
        pid = d.get("id")
        if not isinstance(pid, str) or pid not in self.sent:
            self.unexpected["ack without a known id"] = (
                self.unexpected.get("ack without a known id", 0) + 1)
            return
        got = (str(d["room"]), int(d["seq"]))
        old = self.acks.get(pid)
        if old is not None and old != got:
            self.unexpected["ack changed for a key"] = (
                self.unexpected.get("ack changed for a key", 0) + 1)
        self.acks.setdefault(pid, got)
        cl.inflight.pop(pid, None)
        self._notify()

    def unacked(self) -> int:
        """Publications sent and not acknowledged yet."""
        return sum(len(cl.inflight) for cl in self.clients)
