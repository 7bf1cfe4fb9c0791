"""The node: wiring of hub, bus, fan-out core and domains, and the public server API.

Everything a worker delivers goes through the fan-out core (replies included, so
per-connection order holds under the per-tick cork). A room publication takes one
path whatever its origin: ``bus.publish`` assigns the position and hands it back to
:meth:`Node.on_publication` in every interested worker (rooms.py frames it once).

The node implements :class:`~rtserver.context.HandlerContext`, the narrow API its
domain plugins get (typed against that interface, they never import this module).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from rtserver.auth import ANONYMOUS, AccessPolicy, Principal, TokenVerifier
from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import Bus, BusHealth, BusUnavailable, InterestSnapshot
from rtserver.config import Config, NamespaceConfig
from rtserver.connection import Connection, ConnState
from rtserver.context import HandlerContext, NodeStats
from rtserver.core_metrics import (
    CLOSES,
    DELIVERIES,
    ERRORS,
    HANDLER_FAILURES,
    MESSAGES_IN,
    MESSAGES_OUT,
    PUBLICATIONS,
    SLOW_CONSUMERS,
    register_node_gauges,
    total,
)
from rtserver.heartbeat import HeartbeatSweep
from rtserver.hub import Hub
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY, Counter, Gauge
from rtserver.plugin import DomainPlugin
from rtserver.protocol.close_codes import CloseCode, close_label
from rtserver.protocol.codec import Codec, ErrorCode
from rtserver.protocol.messages import (
    Authenticated,
    ConnectionWelcome,
    Error,
    MessageId,
    ServerMessage,
    Unsubscribed,
    message_tag,
)
from rtserver.protocol.session import (
    Action,
    Authenticate,
    CloseConnection,
    Dispatch,
    DoPresence,
    DoPublish,
    DoSubscribe,
    DoSubscribeMany,
    DoUnsubscribe,
    Fail,
    Reply,
    Session,
    utc_now,
)
from rtserver.rooms import BROADCAST_ROOM, Rooms
from rtserver.router import Router
from rtserver.status import ComponentStates
from rtserver.store.postgres import StoreUnavailable
from rtserver.tasks import TaskFailure, TaskGroup

if TYPE_CHECKING:
    from rtserver.store.postgres import Store
    from rtserver.store.recorder import ConnectionRecorder

__all__ = ["BROADCAST_ROOM", "Node"]

log = get_logger("rtserver.node")


class Node(HandlerContext):
    """One worker's wiring and the public API for server-side code and domains."""

    def __init__(
        self,
        config: Config,
        bus: Bus,
        fanout_module: ModuleType,
        domains: Sequence[type[DomainPlugin]],
        worker_id: int,
        jwt_secret: str,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self._store = store
        #: Batched connection records (with the store), else None.
        self.recorder: ConnectionRecorder | None = None
        self.bus = bus
        self.fanout_module = fanout_module
        self.worker_id = worker_id
        self.hub = Hub(config.heartbeat.sweep_slices, config.admin)
        #: What the domains registered (handlers, hooks, ingress kinds, routes).
        self.router = Router()
        #: One instance per enabled domain: each holds its own per-node state.
        self.domains: list[DomainPlugin] = [cls(config) for cls in domains]
        for domain in self.domains:
            domain.install(self.router, self)
        self.codec = Codec(self.router.message_types())
        self.verifier = TokenVerifier(config.auth, jwt_secret)
        self.policy = AccessPolicy(config.namespaces, config.limits.max_room_name_length)
        self.started_at = time.time()
        self.fanout: Any = None
        self.states = ComponentStates(self.router)
        #: Degraded components (component -> reason), shown on /healthz.
        self.degraded = self.states.degraded
        self.tasks = TaskGroup()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.heartbeat = HeartbeatSweep(
            config.heartbeat, self.hub.sweep_slots, self.codec,
            lambda conn, code, message, action: self.error(conn, code, message, action),
            self.close_connection, lambda n: MESSAGES_OUT.inc("heartbeat", amount=n))
        self.rooms = Rooms(config, self.hub, bus, self.codec, self.policy, self.router, self)
        self.heartbeat.on_step = self.rooms.drop_stale_excludes
        register_node_gauges(self.hub, lambda: self.fanout, lambda: self.bus.health(),
                             self.started_at)

    @property
    def store(self) -> Store | None:
        """The PostgreSQL store, or None when started without --database (handlers answer
        ``feature_unavailable`` then: see :meth:`require_store`)."""
        return self._store

    @store.setter
    def store(self, store: Store | None) -> None:
        self._store = store

    def domain(self, name: str) -> DomainPlugin:
        """The enabled domain called ``name`` (for embedding code and tests)."""
        for domain in self.domains:
            if domain.name == name:
                return domain
        raise KeyError(f"domain {name!r} is not enabled on this node. Required action: add it "
                       "to [domains] enabled")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the fan-out core, connect the bus, start the heartbeat."""
        loop = asyncio.get_running_loop()
        self.fanout = self.fanout_module.Fanout(
            loop, self.config.limits.outbound_buffer_limit, self.slow_consumer)
        self.heartbeat.fanout = self.fanout
        await self.bus.start(self)
        await self.bus.add_interest(BROADCAST_ROOM)
        self._heartbeat_task = loop.create_task(self.heartbeat.run(), name="rtserver-heartbeat")

    async def start_domains(self) -> None:
        """Start every domain (after :meth:`start` and the store)."""
        for domain in self.domains:
            await domain.start()
            log.info("domain_started", domain=domain.name, database=self._store is not None)
        self.states.announcing = True

    async def stop_domains(self) -> None:
        """Stop every domain, last started first (before :meth:`close`)."""
        if not self.states.announcing:
            return
        self.states.announcing = False
        for domain in reversed(self.domains):
            await domain.stop()
            log.info("domain_stopped", domain=domain.name)

    async def close(self) -> None:
        """Stop the heartbeat and every task, flush the fan-out core, disconnect the bus."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self.fanout is not None:
            self.fanout.flush()
        await self.tasks.close()
        await self.bus.close()

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, *,
              restart: BackoffPolicy | None = None,
              on_failure: TaskFailure | None = None) -> asyncio.Task[None]:
        """A supervised task (see :meth:`HandlerContext.spawn`), cancelled by :meth:`close`."""
        return self.tasks.spawn(factory, name, restart=restart, on_failure=on_failure)

    # ------------------------------------------------------------ connections

    def open_connection(self, ws: Any, connection_id: str, remote: str,
                        user_agent: str | None, *, welcome: bool = True) -> Connection:
        """Register a new websockets connection and send the welcome frame (the caller
        sends :meth:`welcome_frame` itself when ``welcome`` is False)."""
        now = time.monotonic()
        rooms: set[str] = set()
        session = Session(connection_id, self.codec, self.verifier, self.policy,
                          self.config.limits, now, rooms, self.hub.by_user)
        conn = Connection(connection_id, ws, None, session, remote, user_agent, time.time(),
                          rooms)
        conn.sink = self.fanout_module.Sink(ws, conn)
        self.hub.add(conn)
        if self.recorder is not None:
            remote_addr = ws.remote_address
            self.recorder.record_connect(connection_id, user_id=None, admin_user_id=None,
                                         ip_address=remote_addr[0] if remote_addr else None,
                                         user_agent=user_agent)
        if welcome:
            self.reply(conn, self._welcome(conn))
        return conn

    def _welcome(self, conn: Connection) -> ConnectionWelcome:
        return ConnectionWelcome(status="connected", connection_id=conn.id,
                                 worker=self.worker_id, server_time=utc_now())

    def welcome_frame(self, conn: Connection) -> bytes | None:
        """The welcome frame, framed to go out with the 101 response in one write (None:
        queued through the fan-out core instead, for a compressed connection)."""
        message = self._welcome(conn)
        if conn.sink.compressed:
            self.reply(conn, message)
            return None
        MESSAGES_OUT.inc(message_tag(message))
        return bytes(self.fanout_module.frame_text(self.codec.encode(message)))

    def connection(self, connection_id: str) -> Connection | None:
        """The local connection with that id, if it is on this worker."""
        return self.hub.connections.get(connection_id)

    async def authenticate_anonymous(self, conn: Connection) -> None:
        """Make ``conn`` anonymous (allowed only by ``auth.allow_anonymous``)."""
        conn.session.set_principal(ANONYMOUS)
        self.hub.set_state(conn, ConnState.ANONYMOUS, "anonymous allowed by configuration")
        self.reply(conn, Authenticated(user=None, permissions=[], anonymous=True))
        await self.run_hooks(conn, "connect", [h(conn) for h in self.router.connect_hooks])

    async def connection_closed(self, conn: Connection, code: int | None,
                                reason: str) -> None:
        """Forget ``conn`` everywhere after its socket closed (the one disconnect path)."""
        if conn.state is ConnState.CLOSED:
            return
        conn.sink.closed = True
        rooms = list(conn.rooms)
        user = conn.user
        emptied, user_gone = self.hub.remove(conn)
        self.hub.set_state(conn, ConnState.CLOSED, reason, code)
        CLOSES.inc(close_label(code))
        if self.recorder is not None:
            self.recorder.record_disconnect(conn.id, close_code=code, close_reason=reason,
                                            state_history=conn.state_history())
        for room in rooms:
            await self.rooms.after_leave(conn, room, room in emptied)
        if user_gone and user is not None:
            await self.rooms.bus_call(self.bus.remove_user_interest(user),
                                     "remove_user_interest")
        await self.run_hooks(conn, "disconnect",
                              [h(conn) for h in self.router.disconnect_hooks])

    def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` with ``code`` (logged as a transition to ``closing``)."""
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        self.hub.set_state(conn, ConnState.CLOSING, reason, code)
        ERRORS.inc(f"close_{code}")
        self.fanout.flush()
        conn.ws.start_close(code, reason)

    def slow_consumer(self, sink: Any, buffered: int) -> None:
        """Close the connection of ``sink`` with 1013: it cannot keep up (logged, counted)."""
        conn: Connection = sink.owner
        SLOW_CONSUMERS.inc()
        log.warning("slow_consumer", connection_id=conn.id, user=conn.user,
                    buffered_bytes=buffered, limit=self.config.limits.outbound_buffer_limit)
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        code = CloseCode.TRY_AGAIN_LATER
        self.hub.set_state(conn, ConnState.CLOSING, "slow consumer", code)
        ERRORS.inc(f"close_{code}")
        conn.ws.start_close(code, "slow consumer: outbound buffer over limit")

    # ------------------------------------------------------------ inbound

    async def handle_frame(self, conn: Connection, frame: str | bytes) -> None:
        """Run one client frame through the session and apply its actions (none once the
        server closes the connection: a policy or slow-consumer close stops reading at once)."""
        if conn.state is ConnState.CLOSING or conn.state is ConnState.CLOSED:
            return
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
                case Fail(code=code, message=message, action=todo, id=msg_id, room=room):
                    self.error(conn, code, message, todo, msg_id, room)
                case CloseConnection(code=code, reason=reason):
                    self.close_connection(conn, code, reason)
                case Authenticate(principal=principal, id=msg_id):
                    await self._authenticated(conn, principal, msg_id)
                case DoSubscribe(room=room, rules=rules, id=msg_id, since=since):
                    MESSAGES_IN.inc("subscribe")
                    await self.rooms.join(conn, room, rules, msg_id, since)
                case DoSubscribeMany(targets=targets, id=msg_id):
                    MESSAGES_IN.inc("subscribe")
                    await self.rooms.join_many(
                        conn, [(t.room, t.rules, t.since) for t in targets], msg_id)
                case DoUnsubscribe(room=room, id=msg_id):
                    MESSAGES_IN.inc("unsubscribe")
                    await self.unsubscribe(conn, room)
                    self.reply(conn, Unsubscribed(room=room, id=msg_id))
                case DoPublish(room=room, data=data, id=msg_id, key=key):
                    MESSAGES_IN.inc("publish")
                    await self.rooms.client_publish(conn, room, data, msg_id, key)
                case DoPresence(room=room, id=msg_id):
                    MESSAGES_IN.inc("presence")
                    await self.rooms.presence(conn, room, msg_id)
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
            await self.rooms.bus_call(self.bus.add_user_interest(principal.user),
                                     "add_user_interest")
        self.reply(conn, Authenticated(user=principal.user, permissions=sorted(
            principal.permissions), anonymous=False, id=msg_id))
        await self.run_hooks(conn, "connect", [h(conn) for h in self.router.connect_hooks])

    async def _dispatch(self, conn: Connection, message: Any) -> None:
        tag = message_tag(message)
        MESSAGES_IN.inc(tag)
        handler = self.router.handler_for(message)
        msg_id = getattr(message, "id", None)
        if handler is None:
            self.error(conn, ErrorCode.UNKNOWN_TYPE, f"no handler for message type {tag!r}",
                       "Required action: use a message type listed in docs/protocol.md", msg_id)
            return
        await self.guarded(conn, tag, handler(conn, message), msg_id)

    async def guarded(self, conn: Connection, what: str, coro: Awaitable[None],
                      msg_id: MessageId = None) -> None:
        """Run a handler or hook for ``conn``: the one error-mapping wrapper.

        A failure answers the client and never kills the connection: backends
        down → ``store_unavailable`` / ``bus_unavailable``; anything else is a
        bug → ``internal_error``. Each is logged and counted
        (``rtserver_handler_failures_total{type,cause}``).
        """
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - mapped, answered, logged and counted
            self._failed(conn, what, exc, msg_id)

    def _failed(self, conn: Connection, what: str, exc: Exception, msg_id: MessageId) -> None:
        """What :meth:`guarded` does with the failure ``exc`` of ``what``."""
        if isinstance(exc, StoreUnavailable):
            HANDLER_FAILURES.inc(what, "store")
            log.error("handler_store_unavailable", what=what, connection_id=conn.id, error=str(exc))
            self.error(conn, ErrorCode.STORE_UNAVAILABLE,
                       f"{what}: the database is unavailable ({exc})",
                       "Required action: retry later with backoff; the server reports the "
                       "outage on /healthz", msg_id)
        elif isinstance(exc, BusUnavailable):
            HANDLER_FAILURES.inc(what, "bus")
            log.error("handler_bus_unavailable", what=what, connection_id=conn.id, error=str(exc))
            self.rooms.bus_error(conn, exc, msg_id)
        else:
            HANDLER_FAILURES.inc(what, "bug")
            log.error("handler_failed", connection_id=conn.id, user=conn.user, what=what,
                      error=repr(exc))
            self.error(conn, ErrorCode.INTERNAL_ERROR, f"{what} failed inside the server",
                       "Required action: report this error with its time; the request was "
                       "not carried out", msg_id)

    async def run_hooks(self, conn: Connection, what: str,
                        coros: list[Awaitable[None]]) -> None:
        """Run domain hooks for ``conn``, each as :meth:`guarded` (inline: no coroutine more)."""
        for coro in coros:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - mapped, answered, logged and counted
                self._failed(conn, what, exc, None)

    # ------------------------------------------------------------ rooms

    def room_rules(self, room: str) -> NamespaceConfig:
        """The namespace rules of ``room``; raises ``AccessDenied`` for an invalid name."""
        return self.policy.namespace(room)[2]

    def check_access(self, principal: Principal, action: Literal["subscribe", "publish"],
                     room: str) -> NamespaceConfig:
        """Check ``action`` on ``room`` for ``principal``; raises ``AccessDenied``."""
        return self.policy.check(principal, action, room)

    async def subscribe(self, conn: Connection, rooms: Sequence[str], msg_id: MessageId,
                        *, access_checked: bool = False) -> bool:
        """Join ``rooms`` with access and the subscription limit checked once (see
        :meth:`HandlerContext.subscribe`)."""
        return await self.rooms.subscribe(conn, rooms, msg_id, access_checked=access_checked)

    async def unsubscribe(self, conn: Connection, room: str) -> None:
        """Leave ``room``."""
        await self.rooms.unsubscribe(conn, room)

    # ------------------------------------------------------------ outbound API

    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn`` (ordered with everything else sent to it)."""
        MESSAGES_OUT.inc(message_tag(message))
        self.fanout.send(conn.sink, self.codec.encode(message))

    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId = None, room: str | None = None) -> None:
        """Send an ``error`` frame to ``conn`` (``room``: the room of a many-room subscribe it
        is about), log it and count it by code."""
        ERRORS.inc(code)
        if log.enabled(20):
            log.info("client_error", connection_id=conn.id, user=conn.user, code=code,
                     message=message)
        self.reply(conn, Error(code=code, message=message, action=action, id=msg_id, room=room))

    def require_store(self, conn: Connection, feature: str, msg_id: MessageId) -> Store | None:
        """The store, or None after answering ``feature_unavailable`` to ``conn``."""
        if self._store is None:
            self.error(conn, ErrorCode.FEATURE_UNAVAILABLE,
                       f"{feature} needs the database, and this server runs without one",
                       "Required action: start the server with --database postgresql://... "
                       "(or RTSERVER_DATABASE)", msg_id)
            return None
        return self._store

    def error_frame(self, conn: Connection, frame: ServerMessage, code: str) -> None:
        """Send an ``error``-tagged frame with extra fields, counted and logged by ``code``."""
        ERRORS.inc(code)
        MESSAGES_OUT.inc("error")
        if log.enabled(20):
            log.info("client_error", connection_id=conn.id, user=conn.user, code=code)
        self.fanout.send(conn.sink, self.codec.encode(frame))

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
                           exclude: Connection | None = None, *, key: str | None = None) -> int:
        """Publish to ``room`` on every worker; returns the assigned seq.

        ``message`` is encoded once; the room's ``seq`` is added on delivery.
        ``exclude`` (a local connection) does not receive it.
        """
        body = message if isinstance(message, bytes) else self.codec.encode(message)
        return await self.rooms.publish(room, body, exclude, key)

    async def broadcast(self, message: ServerMessage | bytes) -> None:
        """Send to every authenticated or anonymous connection on every worker."""
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        await self.bus.emit_room_event(BROADCAST_ROOM, payload)

    # ------------------------------------------------------------ bus handler

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        """Fan a room publication out to the local members."""
        self.rooms.on_publication(room, epoch, seq, body)

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        """A gap the bus cannot fill: ``gap`` frames to the members, a log line, a metric,
        and a system alert."""
        told = self.rooms.on_stream_gap(room, epoch, from_seq, to_seq, reason)

        async def alert() -> None:
            await self.raise_alert(
                "stream_gap", "medium",
                f"room {room}: messages {from_seq}..{to_seq} ({reason}) lost on worker "
                f"{self.worker_id}; {told} connections told",
                {"room": room, "epoch": epoch, "from_seq": from_seq, "to_seq": to_seq,
                 "reason": reason, "worker": self.worker_id, "connections": told})

        self.spawn(alert, f"alert-stream-gap-{room}")

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Fan a room event (or a broadcast) out to the local members."""
        self.rooms.on_room_event(room, payload)

    def on_user_message(self, user: str, payload: bytes) -> None:
        """Deliver a user message to the user's local connections."""
        conns = self.hub.by_user.get(user)
        n = 0
        if conns:
            filters = self.router.user_message_filters
            sinks = [c.sink for c in conns
                     if not filters or all(keep(c, payload) for keep in filters)]
            n = self.fanout.send_many(sinks, payload)
        for hook in self.router.user_delivery_hooks:
            hook(user, payload, n)

    def on_bus_state(self, health: BusHealth) -> None:
        """The bus degraded or recovered: log, health, listeners (admin alerts)."""
        self.set_degraded(f"bus:{health.kind}", not health.ok, health.reason)

    def interest_snapshot(self) -> InterestSnapshot:
        """What the bus must re-declare after a reconnect, derived from the Hub."""
        return self.rooms.interest_snapshot()

    def set_degraded(self, component: str, degraded: bool, reason: str | None) -> None:
        """Mark ``component`` degraded (with ``reason``) or recovered; announce it."""
        self.states.set(component, degraded, reason)

    async def raise_alert(self, alert_type: str, severity: str, message: str,
                          details: object) -> None:
        """Raise a system alert: logged and counted, stored and shown to admins by the
        domains that registered an alert sink (``router.on_alert``)."""
        await self.states.raise_alert(alert_type, severity, message, details)

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

    # ------------------------------------------------------------ context: metrics, stats

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        """Register (or get) a counter exported on ``/metrics``."""
        return REGISTRY.counter(name, help_text, labels)

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = (), *,
              collect: Callable[[], dict[tuple[str, ...], float]]) -> Gauge:
        """Register a gauge whose values ``collect()`` returns at scrape time."""
        return REGISTRY.gauge(name, help_text, labels, collect=collect)

    def stats(self) -> NodeStats:
        """This worker's counters and tables, read in place."""
        hub = self.hub
        fanout = self.fanout
        return NodeStats(
            worker=self.worker_id, uptime=round(time.time() - self.started_at, 3),
            connections=len(hub.connections),
            connections_by_state={s.value: n for s, n in hub.state_counts.items()},
            rooms=len(hub.rooms), subscriptions=hub.subscription_count(),
            messages_in=total(MESSAGES_IN), messages_out=total(MESSAGES_OUT),
            publications=total(PUBLICATIONS), deliveries=total(DELIVERIES),
            errors=total(ERRORS),
            errors_by_code={k[0]: int(v) for k, v in ERRORS.values.items() if k},
            slow_consumers=total(SLOW_CONSUMERS),
            fanout={str(k): int(v) for k, v in fanout.stats().items()} if fanout else {},
            degraded=dict(self.degraded), bus=self.bus.health())

