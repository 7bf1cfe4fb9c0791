"""The node: wiring of hub, bus, fan-out core and router, and the public server API.

Everything a worker delivers goes through the fan-out core (replies included,
so per-connection order holds under the per-tick cork). Room publications
take one path whatever their origin: ``bus.publish`` assigns the seq and the
bus hands the publication back to :meth:`Node.on_publication` in every
interested worker, which adds the seq and frames it once for all local members.

Public API for server-side code and handlers:
:meth:`send_to_connection`, :meth:`send_to_user`, :meth:`send_to_room`,
:meth:`broadcast`, :meth:`reply`, :meth:`error`, :meth:`subscribe`,
:meth:`unsubscribe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
from websockets.protocol import State

from rtserver.auth import AccessPolicy, TokenVerifier
from rtserver.bus.base import (
    Bus,
    BusHealth,
    BusUnavailable,
    InterestSnapshot,
    PresenceMember,
    StreamPosition,
    with_seq,
)
from rtserver.config import Config, NamespaceConfig
from rtserver.hub import Connection, ConnState, Hub
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.codec import Codec, ErrorCode
from rtserver.protocol.messages import (
    Ack,
    Authenticated,
    ConnectionWelcome,
    Error,
    Heartbeat,
    MessageId,
    PresenceMemberOut,
    PresenceReply,
    RoomEvent,
    ServerMessage,
    Subscribed,
    Unsubscribed,
)
from rtserver.protocol.session import (
    Action,
    Authenticate,
    CloseConnection,
    Dispatch,
    DoPresence,
    DoPublish,
    DoSubscribe,
    DoUnsubscribe,
    Fail,
    Reply,
    Session,
    utc_now,
)
from rtserver.router import Router
from rtserver.store.postgres import StoreUnavailable

if TYPE_CHECKING:
    from rtserver.store.postgres import Store
    from rtserver.store.recorder import ConnectionRecorder

__all__ = ["BROADCAST_ROOM", "CLOSE_IDLE", "CLOSE_SLOW_CONSUMER", "Node"]

log = get_logger("rtserver.node")

# The reserved room every worker is interested in; broadcast() goes through it.
BROADCAST_ROOM = "$broadcast"
CLOSE_IDLE = 4008
CLOSE_SLOW_CONSUMER = 1013
CLOSE_AUTH = 4001
CLOSE_PING_TIMEOUT = 1011
OPEN = State.OPEN

MESSAGES_IN = REGISTRY.counter("rtserver_messages_in_total", "Client messages by type", ("type",))
MESSAGES_OUT = REGISTRY.counter(
    "rtserver_messages_out_total", "Server messages queued by type", ("type",))
ERRORS = REGISTRY.counter("rtserver_errors_total", "Error replies and closes by code", ("code",))
DELIVERIES = REGISTRY.counter(
    "rtserver_fanout_deliveries_total", "Room publications queued to local connections")
PUBLICATIONS = REGISTRY.counter(
    "rtserver_publications_total", "Room publications received from the bus")
SLOW_CONSUMERS = REGISTRY.counter(
    "rtserver_slow_consumers_total", "Connections closed with 1013 for exceeding the buffer limit")
CLOSES = REGISTRY.counter("rtserver_closes_total", "Connections closed by code", ("code",))


def _tag(message: object) -> str:
    return str(type(message).__struct_config__.tag)  # type: ignore[attr-defined]


class Node:
    """One worker's wiring and the public API for server-side code."""

    def __init__(
        self,
        config: Config,
        bus: Bus,
        fanout_module: ModuleType,
        router: Router,
        worker_id: int,
        jwt_secret: str,
        store: Store | None = None,
    ) -> None:
        self.config = config
        #: The PostgreSQL store, or None when started without --database
        #: (handlers answer feature_unavailable then: see require_store()).
        self.store = store
        #: Batched connection records (with the store), else None.
        self.recorder: ConnectionRecorder | None = None
        self.bus = bus
        self.fanout_module = fanout_module
        self.router = router
        self.worker_id = worker_id
        self.hub = Hub(config.heartbeat.sweep_slices)
        self.codec = Codec(router.message_types())
        self.verifier = TokenVerifier(config.auth, jwt_secret)
        self.policy = AccessPolicy(config.namespaces, config.limits.max_room_name_length)
        self.started_at = time.time()
        self.fanout: Any = None
        self.degraded: dict[str, str] = {}
        self._interest: dict[str, asyncio.Future[None]] = {}
        # The last position (epoch, seq) delivered per local room (re-declared to the
        # bus after a reconnect: InterestSnapshot.positions, so it fills the gap).
        self._positions: dict[str, tuple[str, int]] = {}
        self._excludes: dict[tuple[str, bytes], tuple[Any, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.state_listeners: list[Callable[[str, bool, str | None], None]] = []
        self._register_metrics()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the fan-out core, connect the bus, start the heartbeat."""
        loop = asyncio.get_running_loop()
        self.fanout = self.fanout_module.Fanout(
            loop, self.config.limits.outbound_buffer_limit, self._on_slow_consumer)
        await self.bus.start(self)
        await self.bus.add_interest(BROADCAST_ROOM)
        self._heartbeat_task = loop.create_task(self._heartbeat(), name="rtserver-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat, flush the fan-out core, disconnect the bus."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self.fanout is not None:
            self.fanout.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bus.close()

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the node keeps a reference to until it ends."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task_failed", task=task.get_name(), error=repr(exc))
            ERRORS.inc(ErrorCode.INTERNAL_ERROR)

    # ------------------------------------------------------------ connections

    def open_connection(self, ws: Any, connection_id: str, remote: str,
                        user_agent: str | None) -> Connection:
        """Register a new websockets connection and send the welcome frame."""
        now = time.monotonic()
        session = Session(connection_id, self.codec, self.verifier, self.policy,
                          self.config.limits, now)
        conn = Connection(connection_id, ws, None, session, remote, user_agent, time.time())
        conn.sink = self.fanout_module.Sink(ws, conn)
        self.hub.add(conn)
        if self.recorder is not None:
            remote_addr = ws.remote_address
            self.recorder.record_connect(connection_id, user_id=None, admin_user_id=None,
                                         ip_address=remote_addr[0] if remote_addr else None,
                                         user_agent=user_agent)
        self.reply(conn, ConnectionWelcome(status="connected", connection_id=connection_id,
                                           worker=self.worker_id, server_time=utc_now()))
        return conn

    async def authenticate_anonymous(self, conn: Connection) -> None:
        """Make ``conn`` anonymous (allowed only by ``auth.allow_anonymous``)."""
        from rtserver.auth import ANONYMOUS

        conn.session.set_principal(ANONYMOUS)
        self.hub.set_state(conn, ConnState.ANONYMOUS, "anonymous allowed by configuration")
        self.reply(conn, Authenticated(user=None, permissions=[], anonymous=True))
        await self._run_hooks(conn, "connect", [h(self, conn) for h in self.router.connect_hooks])

    async def connection_closed(self, conn: Connection, code: int | None,
                                reason: str) -> None:
        """Forget ``conn`` everywhere after its socket closed."""
        if conn.state is ConnState.CLOSED:
            return
        conn.sink.closed = True
        rooms = list(conn.rooms)
        user = conn.user
        emptied, user_gone = self.hub.remove(conn)
        self.hub.set_state(conn, ConnState.CLOSED, reason, code)
        CLOSES.inc(str(code))
        if self.recorder is not None:
            self.recorder.record_disconnect(conn.id, close_code=code, close_reason=reason)
        for room in rooms:
            await self._after_leave(conn, room, room in emptied)
        if user_gone and user is not None:
            await self._bus_call(self.bus.remove_user_interest(user), "remove_user_interest")
        await self._run_hooks(conn, "disconnect",
                              [h(self, conn) for h in self.router.disconnect_hooks])

    def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` with ``code`` (logged as a transition to ``closing``)."""
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        self.hub.set_state(conn, ConnState.CLOSING, reason, code)
        ERRORS.inc(f"close_{code}")
        self.fanout.flush()
        self.spawn(conn.ws.close(code, reason), f"close-{conn.id}")

    def _on_slow_consumer(self, sink: Any, buffered: int) -> None:
        conn: Connection = sink.owner
        SLOW_CONSUMERS.inc()
        log.warning("slow_consumer", connection_id=conn.id, user=conn.user,
                    buffered_bytes=buffered, limit=self.config.limits.outbound_buffer_limit)
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        self.hub.set_state(conn, ConnState.CLOSING, "slow consumer", CLOSE_SLOW_CONSUMER)
        ERRORS.inc(f"close_{CLOSE_SLOW_CONSUMER}")
        self.spawn(conn.ws.close(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer over limit"),
                   f"close-{conn.id}")

    # ------------------------------------------------------------ inbound

    async def handle_frame(self, conn: Connection, frame: str | bytes) -> None:
        """Run one client frame through the session and apply its actions."""
        actions = conn.session.on_frame(frame, time.monotonic())
        if self.recorder is not None:
            self.recorder.touch(conn.id)
        await self.apply(conn, actions)

    async def authenticate_token(self, conn: Connection, token: str) -> None:
        """Authenticate with a token given in the URL."""
        await self.apply(conn, conn.session.authenticate_with(token, None, time.monotonic()))

    async def apply(self, conn: Connection, actions: list[Action]) -> None:
        """Carry out the session's actions in order."""
        for action in actions:
            match action:
                case Reply(message=message):
                    self.reply(conn, message)
                case Fail(code=code, message=message, action=todo, id=msg_id):
                    self.error(conn, code, message, todo, msg_id)
                case CloseConnection(code=code, reason=reason):
                    self.close_connection(conn, code, reason)
                case Authenticate(principal=principal, id=msg_id):
                    await self._authenticated(conn, principal, msg_id)
                case DoSubscribe(room=room, rules=rules, id=msg_id):
                    MESSAGES_IN.inc("subscribe")
                    await self.subscribe(conn, room, rules, msg_id)
                case DoUnsubscribe(room=room, id=msg_id):
                    MESSAGES_IN.inc("unsubscribe")
                    await self.unsubscribe(conn, room)
                    self.reply(conn, Unsubscribed(room=room, id=msg_id))
                case DoPublish(room=room, data=data, id=msg_id):
                    MESSAGES_IN.inc("publish")
                    await self._client_publish(conn, room, data, msg_id)
                case DoPresence(room=room, id=msg_id):
                    MESSAGES_IN.inc("presence")
                    await self._presence(conn, room, msg_id)
                case Dispatch(message=message):
                    await self._dispatch(conn, message)

    async def _authenticated(self, conn: Connection, principal: Any, msg_id: MessageId) -> None:
        MESSAGES_IN.inc("auth")
        previous = conn.user
        conn.session.set_principal(principal)
        if previous is None and conn.state is ConnState.ANONYMOUS:
            # Upgrade of an anonymous connection: re-enter the user table.
            conn.state = ConnState.CONNECTING
            self.hub.state_counts[ConnState.ANONYMOUS] -= 1
            self.hub.state_counts[ConnState.CONNECTING] += 1
        first_of_user = principal.user not in self.hub.by_user
        self.hub.set_state(conn, ConnState.AUTHENTICATED, "token verified")
        if self.recorder is not None:
            self.recorder.record_authenticated(conn.id, user_id=principal.user,
                                               admin_user_id=None)
        if first_of_user:
            await self._bus_call(self.bus.add_user_interest(principal.user), "add_user_interest")
        self.reply(conn, Authenticated(user=principal.user, permissions=sorted(
            principal.permissions), anonymous=False, id=msg_id))
        await self._run_hooks(conn, "connect", [h(self, conn) for h in self.router.connect_hooks])

    async def _dispatch(self, conn: Connection, message: Any) -> None:
        tag = _tag(message)
        MESSAGES_IN.inc(tag)
        handler = self.router.handler_for(message)
        msg_id = getattr(message, "id", None)
        if handler is None:
            self.error(conn, ErrorCode.UNKNOWN_TYPE, f"no handler for message type {tag!r}",
                       "Required action: use a message type listed in docs/protocol.md", msg_id)
            return
        await self.guarded(conn, tag, handler(self, conn, message), msg_id)

    async def guarded(self, conn: Connection, what: str, coro: Awaitable[None],
                      msg_id: MessageId = None) -> None:
        """Run a handler or hook for ``conn``; a failure answers the client, never kills it.

        Backends down → ``store_unavailable`` / ``bus_unavailable``; anything else is a
        bug → ``internal_error``. Each is logged and counted.
        """
        try:
            await coro
        except StoreUnavailable as exc:
            self.error(conn, ErrorCode.STORE_UNAVAILABLE,
                       f"{what}: the database is unavailable ({exc})",
                       "Required action: retry later with backoff; the server reports the "
                       "outage on /healthz", msg_id)
        except BusUnavailable as exc:
            self._bus_error(conn, exc, msg_id)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged and counted
            log.error("handler_failed", connection_id=conn.id, user=conn.user, what=what,
                      error=repr(exc))
            self.error(conn, ErrorCode.INTERNAL_ERROR, f"{what} failed inside the server",
                       "Required action: report this error with its time; the request was "
                       "not carried out", msg_id)

    async def _run_hooks(self, conn: Connection, what: str,
                         coros: list[Awaitable[None]]) -> None:
        for coro in coros:
            await self.guarded(conn, what, coro)

    # ------------------------------------------------------------ rooms

    async def _ensure_interest(self, room: str) -> None:
        fut = self._interest.get(room)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._interest[room] = fut
            try:
                await self.bus.add_interest(room)
            except BusUnavailable as exc:
                del self._interest[room]
                fut.set_exception(exc)
                fut.exception()  # retrieved: every waiter gets it below
                raise
            fut.set_result(None)
            return
        if fut.done():  # the common case: the room already has the bus's interest
            fut.result()
            return
        await asyncio.shield(fut)

    async def subscribe(self, conn: Connection, room: str, rules: NamespaceConfig,
                        msg_id: MessageId = None) -> bool:
        """Join ``room`` (access already checked) and confirm with ``subscribed``.

        The connection joins the room's local table before any await, so no
        publication delivered while the bus interest and the room's last seq
        are fetched is missed (some may arrive before the ``subscribed`` reply;
        the room's seq stays gap-free), and a concurrent last leave does not
        drop the room's bus interest.
        """
        self.hub.join(conn, room)
        try:
            await self._ensure_interest(room)
            pos = await self.bus.position(room)
            seq = pos.seq
            if room in self.hub.rooms:
                self._positions.setdefault(room, (pos.epoch, pos.seq))
        except BusUnavailable as exc:
            if self.hub.leave(conn, room):
                self._interest.pop(room, None)
                await self._bus_call(self.bus.remove_interest(room), "remove_interest")
            self._bus_error(conn, exc, msg_id)
            return False
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return False  # connection_closed() leaves the room (it is in conn.rooms)
        self.reply(conn, Subscribed(room=room, seq=seq, id=msg_id))
        member = PresenceMember(user=conn.user or "", connection_id=conn.id)
        if rules.presence:
            await self._bus_call(self.bus.presence_join(room, member), "presence_join")
        if rules.room_events:
            event = RoomEvent(event="member_joined", room=room, user=conn.user,
                              connection_id=conn.id)
            await self._bus_call(self.bus.emit_room_event(room, self.codec.encode(event)),
                                 "emit_room_event")
        await self._run_hooks(conn, "subscribe",
                              [h(self, conn, room) for h in self.router.subscribe_hooks])
        return True

    async def unsubscribe(self, conn: Connection, room: str) -> None:
        """Leave ``room``."""
        last = self.hub.leave(conn, room)
        await self._after_leave(conn, room, last)

    async def _after_leave(self, conn: Connection, room: str, last: bool) -> None:
        if last:
            self._interest.pop(room, None)
            self._positions.pop(room, None)
            await self._bus_call(self.bus.remove_interest(room), "remove_interest")
        _, _, rules = self.policy.namespace(room)
        member = PresenceMember(user=conn.user or "", connection_id=conn.id)
        if rules.presence:
            await self._bus_call(self.bus.presence_leave(room, member), "presence_leave")
        if rules.room_events:
            event = RoomEvent(event="member_left", room=room, user=conn.user,
                              connection_id=conn.id)
            await self._bus_call(self.bus.emit_room_event(room, self.codec.encode(event)),
                                 "emit_room_event")
        await self._run_hooks(conn, "unsubscribe",
                              [h(self, conn, room) for h in self.router.unsubscribe_hooks])

    async def _client_publish(self, conn: Connection, room: str, data: bytes,
                              msg_id: MessageId) -> None:
        body = b'{"type":"message","room":%b,"from":%b,"data":%b}' % (
            orjson.dumps(room), orjson.dumps(conn.user), data)
        try:
            pos = await self.bus.publish(room, body)
        except BusUnavailable as exc:
            self._bus_error(conn, exc, msg_id)
            return
        self.reply(conn, Ack(room=room, seq=pos.seq, id=msg_id))

    async def _presence(self, conn: Connection, room: str, msg_id: MessageId) -> None:
        limit = self.config.limits.presence_member_limit
        try:
            snap = await self.bus.presence(room, limit)
        except BusUnavailable as exc:
            self._bus_error(conn, exc, msg_id)
            return
        members = [PresenceMemberOut(user=m.user or None, connection_id=m.connection_id)
                   for m in snap.members]
        self.reply(conn, PresenceReply(room=room, count=snap.count, members=members,
                                       truncated=snap.count > len(members), id=msg_id))

    def _bus_error(self, conn: Connection, exc: BusUnavailable, msg_id: MessageId) -> None:
        self.error(conn, ErrorCode.BUS_UNAVAILABLE, f"the message bus is unavailable: {exc}",
                   "Required action: retry with backoff; the server is reconnecting to its bus",
                   msg_id)

    async def _bus_call(self, coro: Any, what: str) -> None:
        try:
            await coro
        except BusUnavailable as exc:
            ERRORS.inc(ErrorCode.BUS_UNAVAILABLE)
            log.error("bus_call_failed", operation=what, error=str(exc))

    # ------------------------------------------------------------ outbound API

    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn`` (ordered with everything else sent to it)."""
        MESSAGES_OUT.inc(_tag(message))
        self.fanout.send(conn.sink, self.codec.encode(message))

    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId = None) -> None:
        """Send an ``error`` frame to ``conn``, log it and count it by code."""
        ERRORS.inc(code)
        if log.enabled(20):
            log.info("client_error", connection_id=conn.id, user=conn.user, code=code,
                     message=message)
        self.reply(conn, Error(code=code, message=message, action=action, id=msg_id))

    def require_store(self, conn: Connection, feature: str, msg_id: MessageId) -> Store | None:
        """The store, or None after answering ``feature_unavailable`` to ``conn``."""
        if self.store is None:
            self.error(conn, ErrorCode.FEATURE_UNAVAILABLE,
                       f"{feature} needs the database, and this server runs without one",
                       "Required action: start the server with --database postgresql://... "
                       "(or RTSERVER_DATABASE)", msg_id)
            return None
        return self.store

    def count_error(self, code: str, conn: Connection) -> None:
        """Count (and log) an error that was answered by the websockets layer itself."""
        ERRORS.inc(code)
        log.info("client_error", connection_id=conn.id, user=conn.user, code=code)

    def send_to_connection(self, connection_id: str, message: ServerMessage | bytes) -> bool:
        """Send to one local connection; False when it is not on this worker."""
        conn = self.hub.connections.get(connection_id)
        if conn is None:
            return False
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        self.fanout.send(conn.sink, payload)
        return True

    async def send_to_user(self, user: str, message: ServerMessage | bytes) -> None:
        """Send to every connection of ``user`` on every worker."""
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        await self.bus.send_to_user(user, payload)

    async def send_to_room(self, room: str, message: ServerMessage | bytes,
                           exclude: Connection | None = None) -> int:
        """Publish to ``room`` on every worker; returns the assigned seq.

        ``message`` is encoded once; the room's ``seq`` is added on delivery.
        ``exclude`` (a local connection) does not receive it.
        """
        body = message if isinstance(message, bytes) else self.codec.encode(message)
        if exclude is None or room not in exclude.rooms:
            return (await self.bus.publish(room, body)).seq
        # The publication comes back through on_publication (possibly after
        # publish() returned, with Redis), which takes the exclusion out.
        key = (room, body)
        self._excludes[key] = (exclude.sink, time.monotonic())
        try:
            return (await self.bus.publish(room, body)).seq
        except BusUnavailable:
            self._excludes.pop(key, None)
            raise

    async def broadcast(self, message: ServerMessage | bytes) -> None:
        """Send to every authenticated or anonymous connection on every worker."""
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        await self.bus.emit_room_event(BROADCAST_ROOM, payload)

    # ------------------------------------------------------------ bus handler

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        """Fan a room publication out to the local members."""
        PUBLICATIONS.inc()
        exclude = None
        if self._excludes:
            entry = self._excludes.pop((room, body), None)
            if entry is not None:
                exclude = entry[0]
        sinks = self.hub.rooms.get(room)
        if not sinks:
            return
        self._positions[room] = (epoch, seq)
        n = self.fanout.send_many(sinks, with_seq(body, seq), exclude)
        DELIVERIES.inc(amount=n)

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        """The bus could not deliver ``from_seq..to_seq`` of ``room``: logged, counted,
        and the room's position moves past the hole (the bus logged it too)."""
        ERRORS.inc(f"stream_gap_{reason}")
        log.warning("stream_gap", room=room, epoch=epoch, from_seq=from_seq, to_seq=to_seq,
                    reason=reason, members=len(self.hub.rooms.get(room) or ()))
        if room in self.hub.rooms:
            self._positions[room] = (epoch, to_seq)

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Fan a room event (or a broadcast) out to the local members."""
        sinks = self.hub.all_sinks if room == BROADCAST_ROOM else self.hub.rooms.get(room)
        if sinks:
            self.fanout.send_many(sinks, payload)

    def on_user_message(self, user: str, payload: bytes) -> None:
        """Deliver a user message to the user's local connections."""
        conns = self.hub.by_user.get(user)
        n = 0
        if conns:
            filters = self.router.user_message_filters
            sinks = [c.sink for c in conns
                     if not filters or all(keep(self, c, payload) for keep in filters)]
            n = self.fanout.send_many(sinks, payload)
        for hook in self.router.user_delivery_hooks:
            hook(self, user, payload, n)

    def on_bus_state(self, health: BusHealth) -> None:
        """The bus degraded or recovered: log, health, listeners (admin alerts)."""
        self.set_degraded(f"bus:{health.kind}", not health.ok, health.reason)

    def interest_snapshot(self) -> InterestSnapshot:
        """What the bus must re-declare after a reconnect, derived from the Hub."""
        presence: list[tuple[str, PresenceMember]] = []
        for conn in self.hub.connections.values():
            if conn.state is ConnState.CLOSED:
                continue
            for room in conn.rooms:
                if self.policy.namespace(room)[2].presence:
                    presence.append(
                        (room, PresenceMember(user=conn.user or "", connection_id=conn.id)))
        rooms = self.hub.rooms
        return InterestSnapshot(rooms=[BROADCAST_ROOM, *rooms],
                                users=list(self.hub.by_user), presence=presence,
                                positions={r: StreamPosition(epoch=e, seq=q)
                                           for r, (e, q) in self._positions.items()
                                           if r in rooms})

    def set_degraded(self, component: str, degraded: bool, reason: str | None) -> None:
        """Mark ``component`` degraded (with ``reason``) or recovered; announce it."""
        if degraded:
            if self.degraded.get(component) == reason:
                return
            self.degraded[component] = reason or "degraded"
            log.error("component_degraded", component=component, reason=reason)
        else:
            if component not in self.degraded:
                return
            del self.degraded[component]
            log.info("component_recovered", component=component)
        for listener in self.state_listeners:
            listener(component, not degraded, reason)

    # ------------------------------------------------------------ heartbeat & idle

    async def _heartbeat(self) -> None:
        """Every connection gets a heartbeat and its checks once per interval.

        Connections are spread round-robin over ``heartbeat.sweep_slices`` slots
        and each step of ``interval / sweep_slices`` seconds handles one slot, so
        10,000 connections cost many short steps, never one long stall of the
        event loop; a new connection is in a slot from its first moment.
        """
        hb = self.config.heartbeat
        slots = self.hub.sweep_slots
        step = hb.interval / len(slots)
        index = 0
        while True:
            await asyncio.sleep(step)
            conns = slots[index]
            if conns:
                self.heartbeat_tick(time.monotonic(), time.time(), list(conns))
            index = (index + 1) % len(slots)

    def heartbeat_tick(self, now: float, wall: float, conns: list[Connection]) -> None:
        """Send the heartbeat frame (and a WebSocket ping) to ``conns``; close idle ones,
        expired tokens and connections whose last ping was not answered in time."""
        hb = self.config.heartbeat
        idle = hb.idle_timeout
        ws_ping = hb.ws_ping
        ping_timeout = hb.ws_ping_timeout
        if self._excludes:
            # An exclusion whose publication never came back (the room lost its
            # last local member meanwhile) is dropped after an idle timeout.
            stale = [k for k, (_, t) in self._excludes.items() if now - t > idle]
            for key in stale:
                del self._excludes[key]
        sinks = []
        for conn in conns:
            state = conn.state
            if state is ConnState.CLOSING or state is ConnState.CLOSED:
                continue
            if now - conn.session.last_activity > idle:
                self.error(conn, "idle_timeout", f"no message from the client for {idle:g} s",
                           'Required action: send {"type":"ping"} more often than '
                           "heartbeat.idle_timeout")
                self.close_connection(conn, CLOSE_IDLE, "idle timeout")
                continue
            p = conn.session.principal
            if p is not None and p.expires_at is not None and p.expires_at <= wall:
                self.error(conn, ErrorCode.TOKEN_EXPIRED, "the token has expired",
                           "Required action: reconnect with a fresh token")
                self.close_connection(conn, CLOSE_AUTH, "token expired")
                continue
            if ws_ping:
                ws = conn.ws
                sent = conn.ping_sent_at
                if sent and getattr(ws, "last_pong", sent) < sent and now - sent > ping_timeout:
                    self.close_connection(conn, CLOSE_PING_TIMEOUT, "keepalive ping timeout")
                    continue
                if ws.protocol.state is OPEN:
                    ws.protocol.send_ping(b"")
                    ws.send_data()
                    if not sent or getattr(ws, "last_pong", 0.0) >= sent:
                        conn.ping_sent_at = now
            if state is not ConnState.CONNECTING:
                sinks.append(conn.sink)
        if sinks:
            n = self.fanout.send_many(sinks, self.codec.encode(Heartbeat(server_time=utc_now())))
            MESSAGES_OUT.inc("heartbeat", amount=n)

    # ------------------------------------------------------------ health & metrics

    def health(self) -> dict[str, Any]:
        """The /healthz document of this worker."""
        bus = self.bus.health()
        reasons = dict(self.degraded)
        if not bus.ok:
            reasons[f"bus:{bus.kind}"] = bus.reason or "degraded"
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "worker": self.worker_id,
            "connections": len(self.hub.connections),
            "uptime": round(time.time() - self.started_at, 3),
            "bus": {"kind": bus.kind, "ok": bus.ok, "reason": bus.reason},
            "fanout": self.fanout_module.__name__,
        }

    def _register_metrics(self) -> None:
        hub = self.hub
        REGISTRY.gauge("rtserver_connections", "Connections by state", ("state",),
                       collect=lambda: {(s.value,): float(n) for s, n in hub.state_counts.items()})
        REGISTRY.gauge("rtserver_rooms", "Rooms with local members",
                       collect=lambda: {(): float(len(hub.rooms))})
        REGISTRY.gauge("rtserver_subscriptions", "Local subscriptions (connection x room)",
                       collect=lambda: {(): float(hub.subscription_count())})
        REGISTRY.gauge("rtserver_fanout", "Fan-out core counters", ("counter",),
                       collect=lambda: {(k,): float(v) for k, v in (
                           self.fanout.stats().items() if self.fanout is not None else ())})
        REGISTRY.gauge("rtserver_bus_up", "1 when the bus is healthy",
                       collect=lambda: {(): 1.0 if self.bus.health().ok else 0.0})
        REGISTRY.gauge("rtserver_uptime_seconds", "Seconds since this worker started",
                       collect=lambda: {(): time.time() - self.started_at})
