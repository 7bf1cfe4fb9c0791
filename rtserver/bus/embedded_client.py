"""The embedded bus client: a worker's :class:`~rtserver.bus.base.Bus` over the
supervisor's :class:`~rtserver.bus.embedded_server.EmbeddedBusServer`.

Requests are pipelined (request id -> future, many in flight) and the frames
written in one loop tick are coalesced into one ``write``. When the server
connection is lost the bus reports degraded health through ``on_bus_state``,
fails requests with :class:`~rtserver.bus.base.BusUnavailable`, reconnects
with exponential backoff and jitter (every attempt logged), re-declares
exactly the handler's :meth:`~rtserver.bus.base.BusHandler.interest_snapshot`
(the bus keeps no copy of the worker's rooms, users or presence), recovers
what its rooms missed since the snapshot's positions (delivered before newer
live publications; an unfillable hole is reported through ``on_stream_gap``,
see :mod:`rtserver.bus.stream_recovery`) and announces the recovery.
Publishes interrupted by the loss are sent again with their keys until their
deadline; other requests fail with :class:`~rtserver.bus.base.BusUnavailable`.

``/healthz`` and ``/metrics`` for the whole server: any worker calls
:meth:`EmbeddedBus.cluster_health` / :meth:`EmbeddedBus.cluster_metrics`;
the server collects every connected worker's metrics text and health (a
``COLLECT`` frame answered from the providers given to the bus) and answers
with the merged result (missing workers are named, which makes the health
degraded). :meth:`EmbeddedBus.cluster_query` asks every worker an admin
query the same way (answered from the query provider given to the bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import msgspec

from rtserver.bus import wire
from rtserver.bus.base import (
    HANDLER_ERRORS,
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    HistoryReport,
    PresenceMember,
    PresenceSnapshot,
    Recovery,
    StreamPosition,
    announce_health,
)
from rtserver.bus.bus_metrics import RECONNECTS, REQUEST_FAILURES
from rtserver.bus.embedded_settings import EmbeddedBusSettings, check_socket_path
from rtserver.bus.embedded_status import ClusterStatusClient
from rtserver.bus.stream_recovery import GapFiller
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["EmbeddedBus"]

_log = get_logger("rtserver.bus.embedded")

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_PUB_HEAD = wire.PUBLISH_HEAD
_ACK_PUB = wire.ACK_PUBLISH
_STAMP = wire.PUB_HEAD
_STAMP_SIZE = wire.PUB_HEAD.size
_ACK_POS = wire.ACK_POSITION

LATE_ANSWERS = REGISTRY.counter(
    "rtserver_bus_late_answers_total",
    "Hub answers that arrived after their request had failed with its timeout")


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


class EmbeddedBus(ClusterStatusClient, Bus):
    """A worker's bus client talking to the supervisor's :class:`EmbeddedBusServer`."""

    kind = "embedded"

    def __init__(self, settings: EmbeddedBusSettings,
                 metrics_provider: Callable[[], str] | None = None,
                 health_provider: Callable[[], dict[str, Any]] | None = None) -> None:
        """``metrics_provider`` renders this worker's Prometheus text (default:
        the process registry labelled ``worker=<id>``); ``health_provider``
        returns this worker's health dict (default: the bus health only)."""
        check_socket_path(settings.socket_path)
        self.settings = settings
        self._metrics_provider = metrics_provider
        self._health_provider = health_provider
        self._query_provider: Callable[[str, dict[str, Any]], Any] | None = None
        self._loop: asyncio.AbstractEventLoop
        self._handler: BusHandler | None = None
        self._conn: _ClientConn | None = None
        self._ready = False
        self._closing = False
        # req -> (future, deadline, kind, frame to resend after a reconnect or None);
        # insertion order = deadline order.
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, bytes]], float, int,
                                       bytes | None]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._req = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._health = BusHealth(kind="embedded", ok=False, reason="not started")
        self._reconnect_task: asyncio.Task[None] | None = None
        # (rooms, users, presence) re-declared by the last (re)connect, for its log line.
        self._declared = (0, 0, 0)
        # The server's instance id (from HELLO): epoch "<instance>.<n>".
        self._instance = ""
        self._gaps = GapFiller("embedded")
        # Keys of publishes the caller gave none (for the retry after a reconnect).
        self._key_prefix = f"\x01{uuid.uuid4().hex[:12]}:"
        self._keys = 0

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
        self._fail_pending("embedded bus closed", keep_retriable=False)
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
        retried = [entry[3] for entry in self._pending.values() if entry[3] is not None]
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                hello = _enc.encode({"worker": self.settings.worker_id, "pid": os.getpid()})
                hello_ack = self._send_request(wire.K_HELLO, "", hello)
                # Taken and queued in one step: a declaration made after this point
                # goes out on this connection behind it, in call order.
                waits, since = self._declare_snapshot()
                recovering = None
                if since:
                    self._gaps.begin([room for room, _ in since])
                    recovering = self._send_request(wire.K_RECOVER, "", _enc.encode(
                        [(room, pos.epoch, pos.seq) for room, pos in since]))
                # Publishes interrupted by the loss go again with their keys: one the
                # server already sequenced is answered with its original position.
                self._out.extend(retried)
                _, payload = await hello_ack
                try:
                    self._instance = str(_dec.decode(payload)["instance"])
                except (msgspec.DecodeError, KeyError, TypeError) as exc:
                    raise BusUnavailable(
                        f"embedded bus: the hub's HELLO answer has no instance id ({exc!r}). "
                        "Required action: run workers and supervisor of the same version"
                    ) from exc
                await asyncio.gather(*waits)
                if recovering is not None:
                    _, payload = await recovering
                    recoveries = [
                        Recovery(position=StreamPosition(epoch=e, seq=q),
                                 publications=[(int(a), bytes(b)) for a, b in pubs],
                                 recovered=ok, reason=why)
                        for e, q, pubs, ok, why in _dec.decode(payload)]
                    self._gaps.finish(self._handler, since, recoveries)
        except BaseException:
            self._ready = False
            self._gaps.abort()
            if conn.transport is not None:
                conn.transport.abort()
            raise

    def _declare_snapshot(self) -> tuple[list[asyncio.Future[tuple[int, bytes]]],
                                         list[tuple[str, StreamPosition]]]:
        """Queue the declaration of exactly the handler's interest snapshot; the
        positions of its rooms to recover."""
        handler = self._handler
        if handler is None:
            return [], []
        snap = handler.interest_snapshot()
        waits = [self._send_request(wire.K_ADD_INTEREST, room, b"") for room in snap.rooms]
        waits.extend(self._send_request(wire.K_ADD_USER, user, b"") for user in snap.users)
        waits.extend(self._send_request(wire.K_PRESENCE_JOIN, room,
                                        _enc.encode((m.user, m.connection_id)))
                     for room, m in snap.presence)
        self._declared = (len(snap.rooms), len(snap.users), len(snap.presence))
        rooms = set(snap.rooms)
        return waits, [(r, p) for r, p in snap.positions.items() if r in rooms]

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
        self._gaps.abort()
        self._fail_pending("embedded bus: the hub connection was lost", keep_retriable=True)
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
                RECONNECTS.inc("embedded", "failed")
                _log.warning("bus_reconnect_failed", bus="embedded", attempt=attempt,
                             error=repr(exc))
                continue
            RECONNECTS.inc("embedded", "ok")
            rooms, users, presence = self._declared
            _log.info("bus_recovered", bus="embedded", attempts=attempt, rooms=rooms,
                      users=users, presence=presence)
            self._set_health(True, None)
            return

    def _fail_pending(self, message: str, keep_retriable: bool) -> None:
        """Fail pending requests; with ``keep_retriable`` publishes stay pending (they
        are sent again after the reconnect, until their deadline)."""
        pending = self._pending
        self._pending = {}
        for req, entry in pending.items():
            fut = entry[0]
            if fut.done():
                continue
            if keep_retriable and entry[3] is not None:
                self._pending[req] = entry
                continue
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

    def _send_request(self, kind: int, key: str, payload: bytes,
                      retriable: bool = False) -> asyncio.Future[tuple[int, bytes]]:
        self._req = (self._req + 1) & 0xFFFFFFFF or 1
        req = self._req
        fut: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        frame = wire.encode(kind, req, 0, key, payload)
        self._pending[req] = (fut, self._loop.time() + self.settings.request_timeout, kind,
                              frame if retriable else None)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self.settings.request_timeout / 4, self._sweep)
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    async def _request(self, kind: int, key: str, payload: bytes = b"") -> tuple[int, bytes]:
        if not self._ready:
            REQUEST_FAILURES.inc("embedded", "disconnected")
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
        for req, (_, deadline, _, _) in pending.items():
            if deadline > now:
                break
            expired.append(req)
        for req in expired:
            fut, _, kind, _ = pending.pop(req)
            if not fut.done():
                REQUEST_FAILURES.inc("embedded", "timeout")
                outcome = (" It is not applied later (the hub refuses it past its deadline); "
                           "if it reached the hub before, a retry with the same key answers "
                           "its original position." if kind == wire.K_PUBLISH else "")
                fut.set_exception(BusUnavailable(
                    f"embedded bus: the hub did not answer {wire.K_NAMES[kind]} within "
                    f"{self.settings.request_timeout}s.{outcome} Required action: retry; check "
                    "the supervisor's load and [bus] request_timeout"))
        if pending and not self._closing:
            self._sweeper = self._loop.call_later(self.settings.request_timeout / 4, self._sweep)

    def _on_frame(self, f: wire.Frame) -> None:
        kind = f.kind
        handler = self._handler
        if kind == wire.K_ACK:
            entry = self._pending.pop(f.req, None)
            if entry is None:
                LATE_ANSWERS.inc()
                _log.error("bus_late_answer", bus="embedded", req=f.req, seq=f.seq,
                           note="the hub answered a request that had already failed with "
                           "its timeout (ignored; the hub refuses a publish past its deadline). "
                           "Required action: check the supervisor's load and [bus] "
                           "request_timeout")
            elif not entry[0].done():
                entry[0].set_result((f.seq, f.payload))
            return
        if handler is None:
            return
        try:
            if kind == wire.K_PUB:
                room = f.key
                epoch = f"{self._instance}.{f.req}"
                payload = f.payload
                body = payload[_STAMP_SIZE:]
                held = self._gaps.rooms
                if held and room in held:
                    held[room].append((epoch, f.seq, body))  # delivered later: not timed
                else:
                    self.accepted_at = _STAMP.unpack_from(payload)[0]
                    try:
                        handler.on_publication(room, epoch, f.seq, body)
                    finally:
                        self.accepted_at = 0.0
            elif kind == wire.K_USER:
                handler.on_user_message(f.key, f.payload)
            elif kind == wire.K_EVENT:
                handler.on_room_event(f.key, f.payload)
            elif kind == wire.K_COLLECT:
                if f.payload:
                    self._answer_query(f.req, f.payload)
                else:
                    self._answer_collect(f.req)
            else:
                _log.error("bus_unknown_frame", kind=kind)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the stream
            HANDLER_ERRORS.inc("embedded")
            _log.error("bus_handler_failed", frame=wire.K_NAMES.get(kind, str(kind)),
                       key=f.key, error=repr(exc))

    # --- Bus API

    async def publish(self, room: str, body: bytes, key: str | None = None) -> StreamPosition:
        """Sequence and deliver ``body``; the publication reaches ``on_publication`` first.

        Interrupted by a connection loss, it is sent again after the reconnect
        with its key (generated when ``key`` is None); the hub refuses it past
        its deadline (``request_timeout``), when it fails with BusUnavailable.
        """
        if not self._ready:
            REQUEST_FAILURES.inc("embedded", "disconnected")
            raise BusUnavailable(
                f"embedded bus: hub unreachable ({self._health.reason}); publish not carried "
                "out. Required action: retry after the bus recovers")
        flags = 0
        if key is None:
            self._keys += 1
            key = f"{self._key_prefix}{self._keys}"
            flags = wire.PUBLISH_KEY_GENERATED
        kb = key.encode()
        accepted = time.monotonic()
        deadline = accepted + self.settings.request_timeout
        payload = _PUB_HEAD.pack(deadline, accepted, flags, len(kb)) + kb + body
        seq, answer = await self._send_request(wire.K_PUBLISH, room, payload, retriable=True)
        n, status = _ACK_PUB.unpack(answer)
        if status == wire.PUBLISH_EXPIRED:
            REQUEST_FAILURES.inc("embedded", "timeout")
            raise BusUnavailable(
                f"embedded bus: publish to {room!r} reached the hub after its deadline "
                f"({self.settings.request_timeout}s) and was not applied. Required action: "
                "retry; check the supervisor's load and [bus] request_timeout")
        return StreamPosition(epoch=f"{self._instance}.{n}", seq=seq)

    async def position(self, room: str) -> StreamPosition:
        """The room's current position as known by the hub."""
        seq, answer = await self._request(wire.K_POSITION, room)
        (n,) = _ACK_POS.unpack(answer)
        return StreamPosition(epoch=f"{self._instance}.{n}", seq=seq)

    async def recover(self, room: str, since: StreamPosition) -> Recovery:
        """What ``room`` published after ``since`` (from the hub's bounded history)."""
        return (await self.recover_many([(room, since)]))[0]

    async def recover_many(self, since: list[tuple[str, StreamPosition]]) -> list[Recovery]:
        """:meth:`recover` for many rooms in one round trip."""
        _, payload = await self._request(wire.K_RECOVER, "", _enc.encode(
            [(room, pos.epoch, pos.seq) for room, pos in since]))
        return [Recovery(position=StreamPosition(epoch=e, seq=q),
                         publications=[(int(a), bytes(b)) for a, b in pubs],
                         recovered=ok, reason=why)
                for e, q, pubs, ok, why in _dec.decode(payload)]

    async def add_interest(self, room: str) -> StreamPosition | None:
        """Receive ``room``'s publications and events here; returns the room's position
        when the hub registered the interest (its later publications come behind this
        answer on the same connection: :meth:`ordered_positions`).

        When the server is unreachable the call returns None (logged): the node has
        the room in its Hub already, so the reconnect re-declares it from
        :meth:`~rtserver.bus.base.BusHandler.interest_snapshot` (health is
        degraded meanwhile).
        """
        answer = await self._declare(wire.K_ADD_INTEREST, room, b"")
        if answer is None:
            return None
        seq, payload = answer
        (n,) = _ACK_POS.unpack(payload)
        return StreamPosition(epoch=f"{self._instance}.{n}", seq=seq)

    def ordered_positions(self, room: str) -> bool:
        """True while connected to the hub and ``room`` is not being recovered: the hub
        sends a room's publications and its answers to this worker in one stream, in
        the order it sequenced them."""
        return self._ready and room not in self._gaps.rooms

    async def remove_interest(self, room: str) -> None:
        """Stop receiving ``room`` (same unreachable-hub rule as :meth:`add_interest`)."""
        await self._declare(wire.K_REMOVE_INTEREST, room, b"")

    async def add_user_interest(self, user: str) -> None:
        """Receive messages for ``user`` here."""
        await self._declare(wire.K_ADD_USER, user, b"")

    async def remove_user_interest(self, user: str) -> None:
        """Stop receiving messages for ``user``."""
        await self._declare(wire.K_REMOVE_USER, user, b"")

    async def _declare(self, kind: int, key: str, payload: bytes) -> tuple[int, bytes] | None:
        """The hub's answer to a declaration, or None when it is deferred to the reconnect."""
        if not self._ready:
            _log.info("bus_declaration_deferred", bus="embedded", what=wire.K_NAMES[kind],
                      key=key, reason=self._health.reason)
            return None
        try:
            return await self._request(kind, key, payload)
        except BusUnavailable:
            if self._ready:
                raise
            # The connection dropped while the declaration was in flight: the
            # reconnect declares the handler's snapshot, which includes it.
            _log.info("bus_declaration_deferred", bus="embedded", what=wire.K_NAMES[kind],
                      key=key, reason=self._health.reason)
            return None

    async def emit_room_event(self, room: str, payload: bytes) -> None:
        """Deliver a room event to every interested worker (raises BusUnavailable when down)."""
        await self._request(wire.K_ROOM_EVENT, room, payload)

    async def send_to_user(self, user: str, payload: bytes) -> None:
        """Deliver ``payload`` to every worker with ``user`` (raises BusUnavailable when down)."""
        await self._request(wire.K_SEND_USER, user, payload)

    async def presence_join(self, room: str, member: PresenceMember) -> None:
        """Record ``member`` (re-declared from the snapshot on reconnect; removed by the
        server if this worker dies)."""
        await self._declare(wire.K_PRESENCE_JOIN, room,
                            _enc.encode((member.user, member.connection_id)))

    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``'s presence."""
        await self._declare(wire.K_PRESENCE_LEAVE, room,
                            _enc.encode((member.user, member.connection_id)))

    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Union of every worker's members of ``room`` (count plus up to ``limit``)."""
        _, payload = await self._request(wire.K_PRESENCE, room, _enc.encode(limit))
        count, members = _dec.decode(payload)
        return PresenceSnapshot(
            count=int(count),
            members=[PresenceMember(user=u, connection_id=c) for u, c in members])

    async def history_info(self, rooms: list[str]) -> HistoryReport:
        """The history depth of ``rooms`` in the hub's room streams, and its bounds."""
        _, payload = await self._request(wire.K_HISTORY_INFO, "", _enc.encode(rooms))
        return msgspec.msgpack.decode(payload, type=HistoryReport)
