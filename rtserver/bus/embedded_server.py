"""The embedded bus server: runs inside the supervisor, one per machine.

Topology::

    worker 0 ─┐                                   ┌─ PUB(room, seq, body) to every
    worker 1 ─┼─ Unix socket ─► EmbeddedBusServer ┤   worker with interest in room
    worker N ─┘  (wire.py frames)                 └─ ACK(req, seq) to the publisher

:class:`EmbeddedBusServer` runs in the supervisor process (one event loop, no
locks). It is the room seq authority: it assigns ``seq = last + 1`` and
queues ``PUB`` to every interested worker before the publisher's ``ACK``, all
in the same loop callback, so every worker's stream carries a room's
publications in seq order (and the publisher sees its own publication before
``publish()`` returns). It keeps interest per room and per user, room
presence (the union over workers) and removes everything of a worker whose
connection closes. The worker side is :mod:`rtserver.bus.embedded_client`.

Room streams (:class:`~rtserver.bus.room_streams.RoomStreams`): every room has
an epoch, a seq and a bounded history; ``RECOVER`` answers what rooms
published after given positions, in one frame for many rooms. A ``PUBLISH``
carries a key (a key applied within ``idempotency_window`` is answered with
its original position, not published again) and a deadline (one arriving
later is refused, so a publish its client reported failed is never applied).

Cluster ``/healthz`` and ``/metrics``: a worker's ``STATUS`` request makes the
server ask every connected worker for its metrics text and health (a
``COLLECT`` frame), wait up to ``collect_timeout`` and answer with the
merged result (missing workers are named). A ``STATUS`` with a payload is an
admin query (msgpack ``[name, args]``, :mod:`rtserver.admin_cluster`): the
``COLLECT`` carries it, every worker answers it from its own tables and the
hub merges the answers the same way. ``HISTORY_INFO`` answers the history
depth of rooms and the retention bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec

from rtserver.bus import wire
from rtserver.bus.base import StreamPosition
from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, check_socket_path
from rtserver.bus.room_streams import RoomStreams
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["EmbeddedBusServer"]

_hub_log = get_logger("rtserver.bus.hub")

_M_HUB_FRAMES = REGISTRY.counter(
    "rtserver_bus_hub_frames_total", "Frames received by the bus hub", ("kind",))
_M_HUB_DISCONNECTS = REGISTRY.counter(
    "rtserver_bus_hub_worker_disconnects_total", "Worker connections to the hub that closed",
    ("reason",))
_M_HUB_PUBLISHED = REGISTRY.counter(
    "rtserver_bus_hub_published_total", "Room publications sequenced by the hub")
_M_HUB_EXPIRED = REGISTRY.counter(
    "rtserver_bus_hub_publish_expired_total",
    "Publishes refused by the hub because they arrived after their deadline (not applied)")
_PUB_HEAD = wire.PUBLISH_HEAD
_ACK_PUB = wire.ACK_PUBLISH
_STAMP = wire.PUB_HEAD
_ACK_POS = wire.ACK_POSITION

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


class _Collection:
    __slots__ = ("handle", "query", "req", "requester", "results", "waiting")

    def __init__(self, requester: _ServerConn, req: int, query: bytes) -> None:
        self.requester = requester
        self.req = req
        #: Empty for a status collection, else the admin query passed to every worker.
        self.query = query
        self.waiting: set[_ServerConn] = set()
        self.results: dict[str, dict[str, Any]] = {}
        self.handle: asyncio.TimerHandle | None = None


class _ServerConn(asyncio.Protocol):
    """One worker's connection as seen by the hub."""

    def __init__(self, hub: EmbeddedBusServer) -> None:
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


class EmbeddedBusServer:
    """The supervisor's hub: seq authority, interest routing and presence for all workers."""

    def __init__(self, settings: EmbeddedBusServerSettings,
                 local_metrics: Callable[[], str] | None = None) -> None:
        """``local_metrics`` renders the supervisor's own metrics for cluster requests."""
        check_socket_path(settings.socket_path)
        self.settings = settings
        self._local_metrics = local_metrics
        self._conns: set[_ServerConn] = set()
        self._by_worker: dict[int, _ServerConn] = {}
        self._streams = RoomStreams(settings.history, "embedded")
        self._rooms: dict[str, set[_ServerConn]] = {}
        self._users: dict[str, set[_ServerConn]] = {}
        self._presence: dict[str, dict[tuple[str, str], _ServerConn]] = {}
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
        self._server = await self._loop.create_unix_server(lambda: _ServerConn(self), path)
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

    # --- dispatch

    def _reply(self, conn: _ServerConn, req: int, seq: int = 0, payload: bytes = b"") -> None:
        conn.send(wire.encode(wire.K_ACK, req, seq, "", payload))

    def _dispatch(self, conn: _ServerConn, f: wire.Frame) -> None:
        kind = f.kind
        _M_HUB_FRAMES.inc(wire.K_NAMES.get(kind, "unknown"))
        if kind == wire.K_PUBLISH:
            self._publish(conn, f)
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
            # The room's position now: its later publications go to conn behind this answer.
            n, seq = self._streams.position_n(f.key, time.monotonic())
            self._reply(conn, f.req, seq, _ACK_POS.pack(n))
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
        elif kind == wire.K_POSITION:
            now = time.monotonic()
            self._streams.maybe_sweep(now, self._rooms.__contains__)
            n, seq = self._streams.position_n(f.key, now)
            self._reply(conn, f.req, seq, _ACK_POS.pack(n))
        elif kind == wire.K_RECOVER:
            self._recover(conn, f)
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
            self._reply(conn, f.req, 0, _enc.encode({"instance": self._streams.instance}))
        elif kind == wire.K_STATUS:
            self._start_collection(conn, f.req, f.payload)
        elif kind == wire.K_HISTORY_INFO:
            report = self._streams.history_info(list(_dec.decode(f.payload)), time.monotonic())
            self._reply(conn, f.req, 0, _enc.encode(report))
        elif kind == wire.K_COLLECT_REPLY:
            self._collect_reply(conn, f.req, f.payload)
        else:
            conn.abort("protocol_error", f"unknown frame kind {kind} from worker")

    def _publish(self, conn: _ServerConn, f: wire.Frame) -> None:
        """Sequence a PUBLISH, queue PUB to every interested worker, then the ACK.

        A key already applied within the idempotency window is answered with its
        original position; a publish arriving after its deadline is refused (the
        client reports it failed, so it must not be applied).
        """
        payload = f.payload
        deadline, accepted, flags, klen = _PUB_HEAD.unpack_from(payload)
        start = _PUB_HEAD.size
        key = payload[start:start + klen].decode() if klen else None
        body = payload[start + klen:]
        room = f.key
        now = time.monotonic()
        streams = self._streams
        if now > deadline and (key is None or streams.lookup(key, now) is None):
            _M_HUB_EXPIRED.inc()
            conn.send(wire.encode(wire.K_ACK, f.req, 0, "",
                                  _ACK_PUB.pack(0, wire.PUBLISH_EXPIRED)))
            return
        streams.maybe_sweep(now, self._rooms.__contains__)
        # A generated key only serves the client's retry, which stops at the deadline:
        # remembered for as long again past it, not for the whole idempotency window.
        remember = (max(deadline - now, 0.0) * 2 if flags & wire.PUBLISH_KEY_GENERATED
                    else None)
        n, seq, applied = streams.publish(room, body, key, now, remember)
        if applied:
            _M_HUB_PUBLISHED.inc()
            targets = self._rooms.get(room)
            if targets:
                frame = wire.encode(wire.K_PUB, n, seq, room, _STAMP.pack(accepted) + body)
                for target in targets:
                    target.send(frame)
        status = wire.PUBLISH_APPLIED if applied else wire.PUBLISH_DUPLICATE
        conn.send(wire.encode(wire.K_ACK, f.req, seq, "", _ACK_PUB.pack(n, status)))

    def _recover(self, conn: _ServerConn, f: wire.Frame) -> None:
        """Answer RECOVER ``[[room, epoch, seq], ...]`` with one recovery per room."""
        now = time.monotonic()
        out = []
        for room, epoch, seq in _dec.decode(f.payload):
            rec = self._streams.recover(room, StreamPosition(epoch=epoch, seq=int(seq)), now)
            out.append((rec.position.epoch, rec.position.seq, rec.publications, rec.recovered,
                        rec.reason))
        self._reply(conn, f.req, 0, _enc.encode(out))

    @staticmethod
    def _discard(table: dict[str, set[_ServerConn]], key: str, conn: _ServerConn) -> None:
        members = table.get(key)
        if members is not None:
            members.discard(conn)
            if not members:
                del table[key]

    def _drop(self, conn: _ServerConn, reason: str) -> None:
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

    def _start_collection(self, requester: _ServerConn, req: int, query: bytes) -> None:
        self._collect_ids = (self._collect_ids + 1) & 0xFFFFFFFF or 1
        cid = self._collect_ids
        coll = _Collection(requester, req, query)
        self._collections[cid] = coll
        frame = wire.encode(wire.K_COLLECT, cid, 0, "", query)
        for conn in self._by_worker.values():
            coll.waiting.add(conn)
            conn.send(frame)
        coll.handle = self._loop.call_later(self.settings.collect_timeout,
                                            self._collection_timeout, cid)
        if not coll.waiting:
            self._finish_collection(coll)

    def _collect_reply(self, conn: _ServerConn, cid: int, payload: bytes) -> None:
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
        supervisor_metrics = (self._local_metrics() if self._local_metrics is not None
                              and not coll.query else "")
        result = {
            "workers": coll.results,
            "missing": missing,
            "expected_workers": self.settings.expected_workers,
            "supervisor_metrics": supervisor_metrics,
            "rooms_sequenced": len(self._streams),
        }
        if not coll.requester.closed:
            self._reply(coll.requester, coll.req, 0, _enc.encode(result))
