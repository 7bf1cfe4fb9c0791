"""Embedded bus: the workers of one machine talk through a hub in the supervisor.

Topology::

    worker 0 ─┐                        ┌─ PUB(room, seq, body) to every worker
    worker 1 ─┼─ Unix socket ─► BusHub ┤   with interest in room (publisher too)
    worker N ─┘  (wire.py frames)      └─ ACK(req, seq) to the publisher

:class:`BusHub` runs inside the supervisor process (one event loop, no
locks). It is the room seq authority: it assigns ``seq = last + 1`` and
queues ``PUB`` to every interested worker before the publisher's ``ACK``, all
in the same loop callback, so every worker's stream carries a room's
publications in seq order (and the publisher sees its own publication before
``publish()`` returns). It keeps interest per room and per user, room
presence (the union over workers) and removes everything of a worker whose
connection closes.

:class:`EmbeddedBus` is the worker side (a :class:`~rtserver.bus.base.Bus`).
Requests are pipelined (request id -> future, many in flight) and the frames
written in one loop tick are coalesced into one ``write``. When the hub
connection is lost the bus reports degraded health through
``on_bus_state``, fails requests with :class:`BusUnavailable`, reconnects with
exponential backoff and jitter (every attempt logged), re-declares its
interests and presence, and announces the recovery.

``/healthz`` and ``/metrics`` for the whole server: any worker calls
:meth:`EmbeddedBus.cluster_health` / :meth:`EmbeddedBus.cluster_metrics`;
the hub asks every connected worker for its metrics text and health (a
``COLLECT`` frame answered from the providers given to the bus), waits up to
``collect_timeout`` and answers with the merged result (missing workers are
named, which makes the health degraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from rtserver.bus import wire
from rtserver.bus.base import (
    HANDLER_ERRORS,
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    PresenceMember,
    PresenceSnapshot,
    announce_health,
)
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = [
    "BusHub",
    "EmbeddedBus",
    "EmbeddedBusSettings",
    "HubSettings",
    "ReconnectPolicy",
    "merge_metrics_texts",
]

_log = get_logger("rtserver.bus.embedded")
_hub_log = get_logger("rtserver.bus.hub")

_M_HUB_FRAMES = REGISTRY.counter(
    "rtserver_bus_hub_frames_total", "Frames received by the bus hub", ("kind",))
_M_HUB_DISCONNECTS = REGISTRY.counter(
    "rtserver_bus_hub_worker_disconnects_total", "Worker connections to the hub that closed",
    ("reason",))
_M_HUB_PUBLISHED = REGISTRY.counter(
    "rtserver_bus_hub_published_total", "Room publications sequenced by the hub")
_M_REQ_FAILED = REGISTRY.counter(
    "rtserver_bus_request_failures_total", "Bus requests that failed", ("bus", "reason"))
_M_RECONNECTS = REGISTRY.counter(
    "rtserver_bus_reconnect_attempts_total", "Bus reconnect attempts", ("bus", "result"))
_M_SEQ_GAPS = REGISTRY.counter(
    "rtserver_bus_seq_gaps_total", "Publications received with a seq that skips values", ("bus",))
_M_HANDLER_ERRORS = HANDLER_ERRORS

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()

MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Backoff of reconnect attempts (config ``[bus] reconnect_*``).

    Attempt ``n`` (from 1) waits ``min(max_delay, initial_delay * 2**(n-1))``
    seconds, scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
    Attempts go on until the bus is closed; each one is logged.
    """

    initial_delay: float
    max_delay: float
    jitter: float

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError(
                f"reconnect delays invalid (initial {self.initial_delay}, max {self.max_delay}). "
                "Required action: set 0 < reconnect_initial_delay <= reconnect_max_delay"
            )
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(
                f"reconnect_jitter {self.jitter} out of range. "
                "Required action: use 0 <= jitter < 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * (2 ** min(attempt - 1, 30)))
        return float(base * (1.0 + self.jitter * random.uniform(-1.0, 1.0)))


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Settings of the supervisor's hub (config ``[workers]`` / ``[bus]``)."""

    #: Unix socket path (in the runtime dir); at most 107 bytes.
    socket_path: str
    #: Number of workers the supervisor runs (health names the missing ones).
    expected_workers: int
    #: Bytes queued to one worker that it has not read yet; past this the hub
    #: closes that worker's connection (it reconnects and re-declares).
    max_worker_buffer: int
    #: Seconds the hub waits for every worker's metrics/health on a cluster request.
    collect_timeout: float


@dataclass(frozen=True, slots=True)
class EmbeddedBusSettings:
    """Settings of a worker's embedded bus client."""

    socket_path: str
    worker_id: int
    #: Seconds a request may wait for the hub's answer before BusUnavailable.
    request_timeout: float
    #: Seconds one connection attempt to the hub may take.
    connect_timeout: float
    reconnect: ReconnectPolicy


def _check_socket_path(path: str) -> None:
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"bus socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes. "
            "Required action: configure a shorter [workers] runtime_dir")


def merge_metrics_texts(texts: list[str]) -> str:
    """Merge Prometheus text expositions into one (one HELP/TYPE per family).

    Each text is expected to carry its own distinguishing label (``worker``);
    samples are grouped under their family in first-seen order.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    order: list[str] = []
    for text in texts:
        current: str | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                head = families[name][0]
                if not any(h.startswith(line[:7]) for h in head):
                    head.append(line)
                current = name
            elif line.startswith("#"):
                continue
            else:
                name = current if current is not None else line.split("{", 1)[0].split(" ", 1)[0]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                families[name][1].append(line)
    out: list[str] = []
    for name in order:
        head, samples = families[name]
        out.extend(head)
        out.extend(samples)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- hub


class _Collection:
    __slots__ = ("handle", "req", "requester", "results", "waiting")

    def __init__(self, requester: _HubConn, req: int) -> None:
        self.requester = requester
        self.req = req
        self.waiting: set[_HubConn] = set()
        self.results: dict[str, dict[str, Any]] = {}
        self.handle: asyncio.TimerHandle | None = None


class _HubConn(asyncio.Protocol):
    """One worker's connection as seen by the hub."""

    def __init__(self, hub: BusHub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader()
        self.out: list[bytes] = []
        self.out_size = 0
        self.flush_scheduled = False
        self.worker: int | None = None
        self.pid: int | None = None
        self.rooms: set[str] = set()
        self.users: set[str] = set()
        self.presence: set[tuple[str, str, str]] = set()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (same API).
        self.transport = cast(asyncio.Transport, transport)
        self.hub._conns.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except wire.FrameError as exc:
            self.abort("frame_error", str(exc))
            return
        hub = self.hub
        for frame in frames:
            if self.closed:
                return
            hub._dispatch(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub._drop(self, "eof" if exc is None else f"error: {exc}")

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.out.append(data)
        self.out_size += len(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.hub._loop.call_soon(self.flush)
        if self.out_size > self.hub.settings.max_worker_buffer:
            self.flush()

    def flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if self.closed or transport is None or not self.out:
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        self.out_size = 0
        transport.write(data)
        buffered = transport.get_write_buffer_size()
        if buffered > self.hub.settings.max_worker_buffer:
            self.abort(
                "slow_worker",
                f"worker {self.worker} has {buffered} unread bytes queued "
                f"(max_worker_buffer {self.hub.settings.max_worker_buffer})")

    def abort(self, reason: str, detail: str) -> None:
        if self.closed:
            return
        _hub_log.error("hub_worker_aborted", worker=self.worker, reason=reason, detail=detail,
                       action="the worker reconnects and re-declares its interests; check its load")
        _M_HUB_DISCONNECTS.inc(reason)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.hub._drop(self, reason)


class BusHub:
    """The supervisor's hub: seq authority, interest routing and presence for all workers."""

    def __init__(self, settings: HubSettings,
                 local_metrics: Callable[[], str] | None = None) -> None:
        """``local_metrics`` renders the supervisor's own metrics for cluster requests."""
        _check_socket_path(settings.socket_path)
        self.settings = settings
        self._local_metrics = local_metrics
        self._conns: set[_HubConn] = set()
        self._by_worker: dict[int, _HubConn] = {}
        self._seqs: dict[str, int] = {}
        self._rooms: dict[str, set[_HubConn]] = {}
        self._users: dict[str, set[_HubConn]] = {}
        self._presence: dict[str, dict[tuple[str, str], _HubConn]] = {}
        self._collections: dict[int, _Collection] = {}
        self._collect_ids = 0
        self._draining = False
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop

    # --- lifecycle

    async def start(self) -> None:
        """Listen on the Unix socket (a stale socket file is removed, a live one is an error)."""
        self._loop = asyncio.get_running_loop()
        path = self.settings.socket_path
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                _hub_log.warning("hub_stale_socket_removed", path=path)
                os.unlink(path)
            else:
                raise RuntimeError(
                    f"bus hub socket {path} is in use by another running server. Required action: "
                    "stop that server or configure a different [workers] runtime_dir")
            finally:
                probe.close()
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self._server = await self._loop.create_unix_server(lambda: _HubConn(self), path)
        os.chmod(path, 0o600)
        _hub_log.info("hub_listening", path=path, expected_workers=self.settings.expected_workers)

    async def close(self) -> None:
        """Stop listening, close every worker connection and remove the socket file."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.flush()
            if conn.transport is not None:
                conn.transport.close()
        for _ in range(50):
            if not self._conns:
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.socket_path)
        _hub_log.info("hub_closed")

    def expect_disconnects(self) -> None:
        """The supervisor is draining: worker disconnects are logged at info, not warning."""
        self._draining = True

    def connected_workers(self) -> list[int]:
        """Ids of the workers with an open hub connection (after HELLO)."""
        return sorted(self._by_worker)

    def room_count(self) -> int:
        """Number of rooms with a seq (ever published)."""
        return len(self._seqs)

    # --- dispatch

    def _reply(self, conn: _HubConn, req: int, seq: int = 0, payload: bytes = b"") -> None:
        conn.send(wire.encode(wire.K_ACK, req, seq, "", payload))

    def _dispatch(self, conn: _HubConn, f: wire.Frame) -> None:
        kind = f.kind
        _M_HUB_FRAMES.inc(wire.K_NAMES.get(kind, "unknown"))
        if kind == wire.K_PUBLISH:
            room = f.key
            seq = self._seqs.get(room, 0) + 1
            self._seqs[room] = seq
            _M_HUB_PUBLISHED.inc()
            targets = self._rooms.get(room)
            if targets:
                frame = wire.encode(wire.K_PUB, 0, seq, room, f.payload)
                for target in targets:
                    target.send(frame)
            conn.send(wire.encode(wire.K_ACK, f.req, seq))
        elif kind == wire.K_SEND_USER:
            targets = self._users.get(f.key)
            if targets:
                frame = wire.encode(wire.K_USER, 0, 0, f.key, f.payload)
                for target in targets:
                    target.send(frame)
            self._reply(conn, f.req)
        elif kind == wire.K_ROOM_EVENT:
            targets = self._rooms.get(f.key)
            if targets:
                frame = wire.encode(wire.K_EVENT, 0, 0, f.key, f.payload)
                for target in targets:
                    target.send(frame)
            self._reply(conn, f.req)
        elif kind == wire.K_ADD_INTEREST:
            self._rooms.setdefault(f.key, set()).add(conn)
            conn.rooms.add(f.key)
            self._reply(conn, f.req, self._seqs.get(f.key, 0))
        elif kind == wire.K_REMOVE_INTEREST:
            self._discard(self._rooms, f.key, conn)
            conn.rooms.discard(f.key)
            self._reply(conn, f.req)
        elif kind == wire.K_ADD_USER:
            self._users.setdefault(f.key, set()).add(conn)
            conn.users.add(f.key)
            self._reply(conn, f.req)
        elif kind == wire.K_REMOVE_USER:
            self._discard(self._users, f.key, conn)
            conn.users.discard(f.key)
            self._reply(conn, f.req)
        elif kind == wire.K_LAST_SEQ:
            self._reply(conn, f.req, self._seqs.get(f.key, 0))
        elif kind == wire.K_PRESENCE_JOIN:
            user, cid = _dec.decode(f.payload)
            self._presence.setdefault(f.key, {})[(user, cid)] = conn
            conn.presence.add((f.key, user, cid))
            self._reply(conn, f.req)
        elif kind == wire.K_PRESENCE_LEAVE:
            user, cid = _dec.decode(f.payload)
            members = self._presence.get(f.key)
            if members is not None:
                members.pop((user, cid), None)
                if not members:
                    del self._presence[f.key]
            conn.presence.discard((f.key, user, cid))
            self._reply(conn, f.req)
        elif kind == wire.K_PRESENCE:
            limit = int(_dec.decode(f.payload))
            members = self._presence.get(f.key, {})
            listed: list[tuple[str, str]] = []
            for key in members:
                if len(listed) >= limit:
                    break
                listed.append(key)
            self._reply(conn, f.req, 0, _enc.encode((len(members), listed)))
        elif kind == wire.K_HELLO:
            info = _dec.decode(f.payload)
            worker = int(info["worker"])
            old = self._by_worker.get(worker)
            if old is not None and old is not conn:
                old.abort("replaced", f"worker {worker} connected again (pid {info.get('pid')})")
            conn.worker = worker
            conn.pid = int(info["pid"])
            self._by_worker[worker] = conn
            _hub_log.info("hub_worker_connected", worker_id=worker, pid=conn.pid,
                          connected=len(self._by_worker))
            self._reply(conn, f.req)
        elif kind == wire.K_STATUS:
            self._start_collection(conn, f.req)
        elif kind == wire.K_COLLECT_REPLY:
            self._collect_reply(conn, f.req, f.payload)
        else:
            conn.abort("protocol_error", f"unknown frame kind {kind} from worker")

    @staticmethod
    def _discard(table: dict[str, set[_HubConn]], key: str, conn: _HubConn) -> None:
        members = table.get(key)
        if members is not None:
            members.discard(conn)
            if not members:
                del table[key]

    def _drop(self, conn: _HubConn, reason: str) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        for room in conn.rooms:
            self._discard(self._rooms, room, conn)
        for user in conn.users:
            self._discard(self._users, user, conn)
        removed = 0
        for room, user, cid in conn.presence:
            members = self._presence.get(room)
            if members is not None and members.get((user, cid)) is conn:
                del members[(user, cid)]
                removed += 1
                if not members:
                    del self._presence[room]
        if conn.worker is not None and self._by_worker.get(conn.worker) is conn:
            del self._by_worker[conn.worker]
        for coll in list(self._collections.values()):
            if conn in coll.waiting:
                coll.waiting.discard(conn)
                if not coll.waiting:
                    self._finish_collection(coll)
            if coll.requester is conn:
                self._collections.pop(coll.req, None)
        _M_HUB_DISCONNECTS.inc("closed")
        log_line = _hub_log.info if self._draining else _hub_log.warning
        log_line("hub_worker_disconnected", worker_id=conn.worker, pid=conn.pid,
                 reason=reason, rooms=len(conn.rooms), users=len(conn.users),
                 presence_removed=removed, draining=self._draining)
        conn.rooms = set()
        conn.users = set()
        conn.presence = set()

    # --- cluster metrics / health

    def _start_collection(self, requester: _HubConn, req: int) -> None:
        self._collect_ids = (self._collect_ids + 1) & 0xFFFFFFFF or 1
        cid = self._collect_ids
        coll = _Collection(requester, req)
        self._collections[cid] = coll
        frame = wire.encode(wire.K_COLLECT, cid)
        for conn in self._by_worker.values():
            coll.waiting.add(conn)
            conn.send(frame)
        coll.handle = self._loop.call_later(self.settings.collect_timeout,
                                            self._collection_timeout, cid)
        if not coll.waiting:
            self._finish_collection(coll)

    def _collect_reply(self, conn: _HubConn, cid: int, payload: bytes) -> None:
        coll = self._collections.get(cid)
        if coll is None or conn not in coll.waiting:
            _hub_log.warning("hub_late_collect_reply", worker_id=conn.worker, collect=cid)
            return
        coll.waiting.discard(conn)
        coll.results[str(conn.worker)] = _dec.decode(payload)
        if not coll.waiting:
            self._finish_collection(coll)

    def _collection_timeout(self, cid: int) -> None:
        coll = self._collections.get(cid)
        if coll is not None:
            _hub_log.warning("hub_collect_timeout", collect=cid,
                             missing=sorted(c.worker for c in coll.waiting if c.worker is not None),
                             timeout=self.settings.collect_timeout)
            coll.waiting.clear()
            self._finish_collection(coll)

    def _finish_collection(self, coll: _Collection) -> None:
        for cid, value in list(self._collections.items()):
            if value is coll:
                del self._collections[cid]
        if coll.handle is not None:
            coll.handle.cancel()
        expected = [str(i) for i in range(self.settings.expected_workers)]
        missing = [w for w in expected if w not in coll.results]
        supervisor_metrics = self._local_metrics() if self._local_metrics is not None else ""
        result = {
            "workers": coll.results,
            "missing": missing,
            "expected_workers": self.settings.expected_workers,
            "supervisor_metrics": supervisor_metrics,
            "rooms_sequenced": len(self._seqs),
        }
        if not coll.requester.closed:
            self._reply(coll.requester, coll.req, 0, _enc.encode(result))


# --------------------------------------------------------------------------- worker client


class _ClientConn(asyncio.Protocol):
    def __init__(self, bus: EmbeddedBus) -> None:
        self.bus = bus
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader()
        self.lost: asyncio.Future[None] = bus._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (same API).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except wire.FrameError as exc:
            _log.error("bus_frame_error", error=str(exc),
                       action="the connection is closed and re-established")
            if self.transport is not None:
                self.transport.abort()
            return
        bus = self.bus
        for frame in frames:
            bus._on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.bus._on_lost(self, exc)


class EmbeddedBus(Bus):
    """A worker's bus client talking to the supervisor's :class:`BusHub`."""

    kind = "embedded"

    def __init__(self, settings: EmbeddedBusSettings,
                 metrics_provider: Callable[[], str] | None = None,
                 health_provider: Callable[[], dict[str, Any]] | None = None) -> None:
        """``metrics_provider`` renders this worker's Prometheus text (default:
        the process registry labelled ``worker=<id>``); ``health_provider``
        returns this worker's health dict (default: the bus health only)."""
        _check_socket_path(settings.socket_path)
        self.settings = settings
        self._metrics_provider = metrics_provider
        self._health_provider = health_provider
        self._loop: asyncio.AbstractEventLoop
        self._handler: BusHandler | None = None
        self._conn: _ClientConn | None = None
        self._ready = False
        self._closing = False
        # req -> (future, deadline, kind); insertion order = deadline order.
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, bytes]], float, int]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._req = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._rooms: set[str] = set()
        self._users: set[str] = set()
        self._presence: dict[str, set[tuple[str, str]]] = {}
        self._last_seen: dict[str, int] = {}
        self._health = BusHealth(kind="embedded", ok=False, reason="not started")
        self._reconnect_task: asyncio.Task[None] | None = None

    # --- status providers

    def set_status_providers(self, metrics_provider: Callable[[], str] | None,
                             health_provider: Callable[[], dict[str, Any]] | None) -> None:
        """Replace the providers answering the hub's cluster metrics/health requests."""
        self._metrics_provider = metrics_provider
        self._health_provider = health_provider

    # --- lifecycle

    async def start(self, handler: BusHandler) -> None:
        """Connect to the hub; raises :class:`BusUnavailable` when it cannot be reached."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        try:
            await self._connect()
        except (OSError, TimeoutError, BusUnavailable) as exc:
            raise BusUnavailable(
                f"embedded bus: cannot reach the hub at {self.settings.socket_path}: {exc}. "
                "Required action: start workers through the supervisor (rtserver serve "
                "--workers N), which runs the hub") from exc
        self._set_health(True, None)
        _log.info("bus_connected", bus="embedded", path=self.settings.socket_path)

    async def close(self) -> None:
        """Stop reconnecting, fail pending requests and close the hub connection."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
            self._reconnect_task = None
        conn = self._conn
        if conn is not None and conn.transport is not None:
            self._flush()
            conn.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.lost), self.settings.connect_timeout)
            except TimeoutError:
                _log.warning("bus_close_timeout", bus="embedded",
                             timeout=self.settings.connect_timeout,
                             note="the hub connection did not report closed in time; "
                             "continuing the shutdown")
        self._fail_pending("embedded bus closed")
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._ready = False

    async def _connect(self) -> None:
        async with asyncio.timeout(self.settings.connect_timeout):
            _, conn = await self._loop.create_unix_connection(
                lambda: _ClientConn(self), self.settings.socket_path)
        self._conn = conn
        self._ready = True
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                hello = _enc.encode({"worker": self.settings.worker_id, "pid": os.getpid()})
                waits = [self._send_request(wire.K_HELLO, "", hello)]
                for room in self._rooms:
                    waits.append(self._send_request(wire.K_ADD_INTEREST, room, b""))
                for user in self._users:
                    waits.append(self._send_request(wire.K_ADD_USER, user, b""))
                for room, members in self._presence.items():
                    for user, cid in members:
                        waits.append(self._send_request(wire.K_PRESENCE_JOIN, room,
                                                        _enc.encode((user, cid))))
                await asyncio.gather(*waits)
        except BaseException:
            self._ready = False
            if conn.transport is not None:
                conn.transport.abort()
            raise

    # --- health

    def health(self) -> BusHealth:
        """Current state (no I/O)."""
        return self._health

    def _set_health(self, ok: bool, reason: str | None) -> None:
        self._health = BusHealth(kind="embedded", ok=ok, reason=reason)
        announce_health(self._handler, self._health)

    # --- connection loss and reconnect

    def _on_lost(self, conn: _ClientConn, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        was_ready = self._ready
        self._ready = False
        self._out.clear()
        self._fail_pending("embedded bus: the hub connection was lost")
        if self._closing:
            return
        reason = f"hub connection lost ({exc or 'closed by hub'})"
        _log.error("bus_disconnected", bus="embedded", reason=reason,
                   action="reconnecting with backoff; publishes fail until recovery")
        if was_ready:
            self._set_health(False, reason)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        policy = self.settings.reconnect
        attempt = 0
        while not self._closing:
            attempt += 1
            delay = policy.delay(attempt)
            _log.warning("bus_reconnect_attempt", bus="embedded", attempt=attempt,
                         delay=round(delay, 3), path=self.settings.socket_path)
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._connect()
            except (OSError, TimeoutError, BusUnavailable) as exc:
                _M_RECONNECTS.inc("embedded", "failed")
                _log.warning("bus_reconnect_failed", bus="embedded", attempt=attempt,
                             error=repr(exc))
                continue
            _M_RECONNECTS.inc("embedded", "ok")
            self._last_seen.clear()
            _log.info("bus_recovered", bus="embedded", attempts=attempt, rooms=len(self._rooms),
                      users=len(self._users))
            self._set_health(True, None)
            return

    def _fail_pending(self, message: str) -> None:
        pending = self._pending
        self._pending = {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(BusUnavailable(
                    f"{message}. Required action: retry after the bus recovers"))

    # --- frames

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._conn
        if not self._out:
            return
        if conn is None or conn.transport is None:
            self._out.clear()
            return
        out = self._out
        conn.transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()

    def _send_request(self, kind: int, key: str,
                      payload: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self._req = (self._req + 1) & 0xFFFFFFFF or 1
        req = self._req
        fut: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        self._pending[req] = (fut, self._loop.time() + self.settings.request_timeout, kind)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self.settings.request_timeout / 4, self._sweep)
        self._out.append(wire.encode(kind, req, 0, key, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    async def _request(self, kind: int, key: str, payload: bytes = b"") -> tuple[int, bytes]:
        if not self._ready:
            _M_REQ_FAILED.inc("embedded", "disconnected")
            raise BusUnavailable(
                f"embedded bus: hub unreachable ({self._health.reason}); "
                f"{wire.K_NAMES[kind]} not carried out. Required action: retry after the bus "
                "recovers")
        return await self._send_request(kind, key, payload)

    def _sweep(self) -> None:
        """Fail requests older than request_timeout (checked every quarter of it).

        One timer for all requests instead of one per request: a request fails
        between 1x and 1.25x request_timeout after it was sent.
        """
        self._sweeper = None
        now = self._loop.time()
        pending = self._pending
        expired = []
        for req, (_, deadline, _) in pending.items():
            if deadline > now:
                break
            expired.append(req)
        for req in expired:
            fut, _, kind = pending.pop(req)
            if not fut.done():
                _M_REQ_FAILED.inc("embedded", "timeout")
                fut.set_exception(BusUnavailable(
                    f"embedded bus: the hub did not answer {wire.K_NAMES[kind]} within "
                    f"{self.settings.request_timeout}s. Required action: retry; check the "
                    "supervisor's load and [bus] request_timeout"))
        if pending and not self._closing:
            self._sweeper = self._loop.call_later(self.settings.request_timeout / 4, self._sweep)

    def _on_frame(self, f: wire.Frame) -> None:
        kind = f.kind
        handler = self._handler
        if kind == wire.K_ACK:
            entry = self._pending.pop(f.req, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result((f.seq, f.payload))
            return
        if handler is None:
            return
        try:
            if kind == wire.K_PUB:
                room = f.key
                last = self._last_seen.get(room)
                if last is not None and f.seq != last + 1:
                    _M_SEQ_GAPS.inc("embedded")
                    _log.warning("bus_seq_gap", bus="embedded", room=room, expected=last + 1,
                                 got=f.seq)
                self._last_seen[room] = f.seq
                handler.on_publication(room, f.seq, f.payload)
            elif kind == wire.K_USER:
                handler.on_user_message(f.key, f.payload)
            elif kind == wire.K_EVENT:
                handler.on_room_event(f.key, f.payload)
            elif kind == wire.K_COLLECT:
                self._answer_collect(f.req)
            elif kind == wire.K_ERROR:
                entry = self._pending.pop(f.req, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(BusUnavailable(f.payload.decode()))
            else:
                _log.error("bus_unknown_frame", kind=kind)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the stream
            _M_HANDLER_ERRORS.inc("embedded")
            _log.error("bus_handler_failed", frame=wire.K_NAMES.get(kind, str(kind)),
                       key=f.key, error=repr(exc))

    def _answer_collect(self, cid: int) -> None:
        worker = self.settings.worker_id
        if self._metrics_provider is not None:
            metrics = self._metrics_provider()
        else:
            metrics = REGISTRY.render({"worker": str(worker)})
        if self._health_provider is not None:
            health = self._health_provider()
        else:
            h = self._health
            health = {"ok": h.ok, "bus": {"kind": h.kind, "ok": h.ok, "reason": h.reason}}
        payload = _enc.encode({"metrics": metrics, "health": health, "pid": os.getpid(),
                               "time": time.time()})
        self._out.append(wire.encode(wire.K_COLLECT_REPLY, cid, 0, "", payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # --- Bus API

    async def publish(self, room: str, body: bytes) -> int:
        """Sequence and deliver ``body``; the publication reaches ``on_publication`` first."""
        seq, _ = await self._request(wire.K_PUBLISH, room, body)
        return seq

    async def last_seq(self, room: str) -> int:
        """The room's last seq as known by the hub."""
        seq, _ = await self._request(wire.K_LAST_SEQ, room)
        return seq

    async def add_interest(self, room: str) -> None:
        """Receive ``room``'s publications and events here.

        Recorded locally first; when the hub is unreachable the call returns and
        the interest is declared on recovery (health is degraded meanwhile).
        """
        self._rooms.add(room)
        await self._declare(wire.K_ADD_INTEREST, room, b"")

    async def remove_interest(self, room: str) -> None:
        """Stop receiving ``room`` (same unreachable-hub rule as :meth:`add_interest`)."""
        self._rooms.discard(room)
        self._last_seen.pop(room, None)
        await self._declare(wire.K_REMOVE_INTEREST, room, b"")

    async def add_user_interest(self, user: str) -> None:
        """Receive messages for ``user`` here."""
        self._users.add(user)
        await self._declare(wire.K_ADD_USER, user, b"")

    async def remove_user_interest(self, user: str) -> None:
        """Stop receiving messages for ``user``."""
        self._users.discard(user)
        await self._declare(wire.K_REMOVE_USER, user, b"")

    async def _declare(self, kind: int, key: str, payload: bytes) -> None:
        if not self._ready:
            _log.info("bus_declaration_deferred", bus="embedded", what=wire.K_NAMES[kind],
                      key=key, reason=self._health.reason)
            return
        try:
            await self._request(kind, key, payload)
        except BusUnavailable:
            if self._ready:
                raise
            # The connection dropped while the declaration was in flight: the
            # local record is replayed by the reconnect (logged there).
            _log.info("bus_declaration_deferred", bus="embedded", what=wire.K_NAMES[kind],
                      key=key, reason=self._health.reason)

    async def emit_room_event(self, room: str, payload: bytes) -> None:
        """Deliver a room event to every interested worker (raises BusUnavailable when down)."""
        await self._request(wire.K_ROOM_EVENT, room, payload)

    async def send_to_user(self, user: str, payload: bytes) -> None:
        """Deliver ``payload`` to every worker with ``user`` (raises BusUnavailable when down)."""
        await self._request(wire.K_SEND_USER, user, payload)

    async def presence_join(self, room: str, member: PresenceMember) -> None:
        """Record ``member`` (replayed on reconnect; removed by the hub if this worker dies)."""
        self._presence.setdefault(room, set()).add((member.user, member.connection_id))
        await self._declare(wire.K_PRESENCE_JOIN, room,
                            _enc.encode((member.user, member.connection_id)))

    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``'s presence."""
        members = self._presence.get(room)
        if members is not None:
            members.discard((member.user, member.connection_id))
            if not members:
                del self._presence[room]
        await self._declare(wire.K_PRESENCE_LEAVE, room,
                            _enc.encode((member.user, member.connection_id)))

    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Union of every worker's members of ``room`` (count plus up to ``limit``)."""
        _, payload = await self._request(wire.K_PRESENCE, room, _enc.encode(limit))
        count, members = _dec.decode(payload)
        return PresenceSnapshot(
            count=int(count),
            members=[PresenceMember(user=u, connection_id=c) for u, c in members])

    # --- cluster status

    async def cluster_status(self) -> dict[str, Any]:
        """Every worker's metrics text and health as collected by the hub."""
        _, payload = await self._request(wire.K_STATUS, "")
        result: dict[str, Any] = _dec.decode(payload)
        return result

    async def cluster_metrics(self) -> str:
        """Prometheus text for the whole server (every worker, labelled, plus the supervisor)."""
        status = await self.cluster_status()
        texts = [w["metrics"] for _, w in sorted(status["workers"].items(),
                                                 key=lambda kv: int(kv[0]))]
        if status["supervisor_metrics"]:
            texts.append(status["supervisor_metrics"])
        missing = status["missing"]
        texts.append(
            "# HELP rtserver_cluster_workers_missing Workers that did not answer the collection\n"
            "# TYPE rtserver_cluster_workers_missing gauge\n"
            f"rtserver_cluster_workers_missing {len(missing)}\n")
        return merge_metrics_texts(texts)

    async def cluster_health(self) -> dict[str, Any]:
        """Health of the whole server: ``status`` ok/degraded, per-worker health, reasons."""
        status = await self.cluster_status()
        reasons: list[str] = []
        workers: dict[str, Any] = {}
        for wid, info in status["workers"].items():
            health = info["health"]
            workers[wid] = health
            # Either {"ok": bool, "reason": ...} or the node's {"status": ..., "reasons": ...}.
            ok = health["ok"] if "ok" in health else health.get("status") == "ok"
            if not ok:
                why = health.get("reason") or health.get("reasons") or "not ok"
                reasons.append(f"worker {wid}: {why}")
        for wid in status["missing"]:
            reasons.append(f"worker {wid}: not connected to the hub or did not answer")
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "workers": workers,
            "expected_workers": status["expected_workers"],
        }
