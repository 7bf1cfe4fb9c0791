"""One client connection of a worker: admission before the upgrade, then its frames
through the node one at a time and in order, and its one end (rtserver/ws_server.py
is the layer below; docs/architecture.md, "One connection")."""

from __future__ import annotations

import asyncio
import collections
import traceback
from collections.abc import Awaitable, Coroutine
from typing import Any, ClassVar, Protocol

from websockets.http11 import Request, Response

from rtserver import jsonlog
from rtserver.admission import Admission
from rtserver.connection import ConnState
from rtserver.metrics import REGISTRY
from rtserver.protocol.close_codes import CloseCode
from rtserver.protocol.codec import ErrorCode
from rtserver.ws_server import WsConnection, WsServer
from rtserver.ws_slim import open_connection, url_token

__all__ = ["AuthTurns", "Owner", "RtConnection", "close_info"]


AUTH_WAITING = REGISTRY.gauge(
    "rtserver_auth_waiting",
    "Upgraded connections waiting for their turn to authenticate (server.max_concurrent_auth)")
AUTH_WAITING_MAX = REGISTRY.gauge(
    "rtserver_auth_waiting_max",
    "Most connections waiting at once for their turn to authenticate since the worker started")


class AuthTurns:
    """At most ``server.max_concurrent_auth`` authentications of one worker at once; the
    connections after them wait in arrival order (each with its frames queued)."""

    __slots__ = ("limit", "running", "waiting", "waiting_max")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.waiting: collections.deque[tuple[RtConnection, str | None]] = collections.deque()
        self.waiting_max = 0

    def submit(self, ws: RtConnection, tok: str | None) -> None:
        """Authenticate ``ws`` now (URL token ``tok``, None: anonymous), or once a turn
        is free."""
        if self.running < self.limit:
            self.running += 1
            ws.authenticate(tok)
            return
        ws.waiting_turn = True
        waiting = self.waiting
        waiting.append((ws, tok))
        AUTH_WAITING.set(len(waiting))
        if len(waiting) > self.waiting_max:
            self.waiting_max = len(waiting)
            AUTH_WAITING_MAX.set(self.waiting_max)

    def done(self) -> None:
        """One authentication finished (either way): start the next waiting ones."""
        self.running -= 1
        waiting = self.waiting
        while waiting and self.running < self.limit:
            ws, tok = waiting.popleft()
            ws.waiting_turn = False
            if ws.lost:
                continue  # ended while waiting: on_close forgot it in the node already
            self.running += 1
            ws.authenticate(tok)
        AUTH_WAITING.set(len(waiting))


class Owner(Protocol):
    """What a connection uses of its worker's server (rtserver.server.RtServer)."""

    node: Any
    config: Any
    connection_tasks: set[asyncio.Task[None]]
    auth_turns: AuthTurns

    def process_request(self, connection: RtConnection, request: Request
                        ) -> Response | Awaitable[Response | None] | None:
        """Admission or an HTTP endpoint for the handshake request."""


log = jsonlog.get_logger("rtserver.server")


class RtConnection(WsConnection):
    """One client connection of one worker (rtserver/ws_server.py): admission before the
    upgrade, then its frames through the node, one at a time and in order.

    No task while idle: a task runs only while the node is handling this connection's
    frames (``busy``); frames arriving meanwhile wait in ``inbox`` (reading pauses at
    ``server.max_incoming_queue``, resumes at a quarter of it)."""

    __slots__ = ("auth_overdue", "auth_slot", "auth_timer", "busy", "conn", "forwarded_client",
                 "handshaking", "inbox", "reading_paused", "waiting_turn")
    #: Set on the subclass each RtServer makes: admitted connection -> the address its
    #: admission slot is counted under.
    admitted: ClassVar[dict[RtConnection, str]] = {}
    admission: ClassVar[Admission | None] = None
    rt: ClassVar[Owner]

    def __init__(self, server: WsServer) -> None:
        super().__init__(server)
        #: The client's IP address when a trusted proxy forwarded it (set before the upgrade).
        self.forwarded_client: str | None = None
        #: Admitted and not authenticated yet (counted in ``admission.handshakes``).
        self.handshaking = False
        #: The node's connection (from ``on_open``).
        self.conn: Any = None
        self.inbox: list[str | bytes] | None = None
        self.busy: asyncio.Task[None] | None = None
        self.auth_timer: asyncio.TimerHandle | None = None
        #: ``auth.auth_timeout`` passed while a frame was being handled.
        self.auth_overdue = False
        self.reading_paused = False
        #: Waiting in ``AuthTurns`` for a turn to authenticate.
        self.waiting_turn = False
        #: The running task holds one of ``AuthTurns``' turns.
        self.auth_slot = False

    @property
    def remote_address(self) -> Any:
        """The TCP peer, or ``(client IP, 0)`` when a trusted proxy forwarded it."""
        if self.forwarded_client is not None:
            return (self.forwarded_client, 0)
        transport = self.transport
        return transport.get_extra_info("peername") if transport is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the admission slot, then end the connection."""
        self.end_handshake()
        address = self.admitted.pop(self, None)
        if address is not None and self.admission is not None:
            self.admission.release(address)
        super().connection_lost(exc)

    def end_handshake(self) -> None:
        """The client authenticated, or the connection ended before it did."""
        if self.handshaking and self.admission is not None:
            self.handshaking = False
            self.admission.handshake_ended()

    # ------------------------------------------------------------ hooks

    def on_request(self, request: Request) -> Response | Awaitable[Response | None] | None:
        """Admission for the WebSocket path, the HTTP endpoints for any other."""
        return self.rt.process_request(self, request)

    def on_open(self, request: Request) -> bytes | None:
        """Register with the node; authenticate with the URL token, anonymously, or wait
        ``auth.auth_timeout`` for an auth message. The welcome frame goes out with the
        101 response."""
        rt = self.rt
        node = rt.node
        self.conn = conn = open_connection(node, self, request, welcome=False)
        first: bytes | None = node.welcome_frame(conn)
        tok = url_token(request)
        if tok is not None or rt.config.auth.allow_anonymous:
            rt.auth_turns.submit(self, tok)
        else:
            self.auth_timer = self.server.loop.call_later(
                rt.config.auth.auth_timeout, self._auth_expired)
        return first

    def authenticate(self, tok: str | None) -> None:
        """This connection's turn (AuthTurns): the URL token, or anonymous."""
        node = self.rt.node
        self.auth_slot = True
        self._start(node.authenticate_token(self.conn, tok) if tok is not None
                    else node.authenticate_anonymous(self.conn))

    def on_message(self, data: str | bytes) -> None:
        """Handle ``data`` now, or after the frames before it."""
        if self.busy is None and not self.waiting_turn:
            self._start(self.rt.node.handle_frame(self.conn, data))
            return
        inbox = self.inbox
        if inbox is None:
            inbox = self.inbox = []
        inbox.append(data)
        if len(inbox) >= self.server.settings.max_queue and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_close(self) -> None:
        """Forget the connection in the node (after the frames already received)."""
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        if self.conn is not None and self.busy is None:
            self._start(None)

    # ------------------------------------------------------------ frame handling

    def _start(self, first: Coroutine[Any, Any, None] | None) -> None:
        task = self.server.loop.create_task(self._run(first))
        self.busy = task
        self.rt.connection_tasks.add(task)
        task.add_done_callback(self.rt.connection_tasks.discard)

    async def _run(self, coro: Coroutine[Any, Any, None] | None) -> None:
        node = self.rt.node
        conn = self.conn
        try:
            while coro is not None:
                try:
                    await coro
                finally:
                    if self.auth_slot:
                        self.auth_slot = False
                        self.rt.auth_turns.done()
                coro = None
                if self.handshaking or self.auth_timer is not None or self.auth_overdue:
                    self._auth_step()
                inbox = self.inbox
                if inbox:
                    data = inbox.pop(0)
                    if self.reading_paused and len(inbox) <= self.server.settings.max_queue // 4:
                        self.reading_paused = False
                        if not self.lost:
                            self.transport.resume_reading()
                    coro = node.handle_frame(conn, data)
                    del data  # not kept while the next one is handled
        except Exception as exc:  # noqa: BLE001 - a server bug: logged, counted, closed 1011
            log.error("connection_handler_failed", connection_id=conn.id, user=conn.user,
                      error=repr(exc), traceback=traceback.format_exc())
            node.count_error(ErrorCode.INTERNAL_ERROR, conn)
            self.inbox = None
            self.start_close(1011, "internal error")
        finally:
            self.busy = None
        if self.lost:
            await self._closed()

    def _auth_step(self) -> None:
        conn = self.conn
        if conn.state is not ConnState.CONNECTING:
            self.end_handshake()
            self.auth_overdue = False
            if self.auth_timer is not None:
                self.auth_timer.cancel()
                self.auth_timer = None
        elif self.auth_overdue:
            self.auth_overdue = False
            self._auth_failed()

    def _auth_expired(self) -> None:
        self.auth_timer = None
        if self.conn.state is not ConnState.CONNECTING:
            return
        if self.busy is not None:
            self.auth_overdue = True  # decided once the frame in hand is handled
            return
        self._auth_failed()

    def _auth_failed(self) -> None:
        node = self.rt.node
        timeout = self.rt.config.auth.auth_timeout
        node.error(self.conn, ErrorCode.AUTH_TIMEOUT, f"no auth message within {timeout:g} s",
                   'Required action: send {"type":"auth","token":JWT} right after '
                   "connecting, or pass ?token=JWT")
        node.close_connection(self.conn, CloseCode.AUTH_FAILED, "auth timeout")

    async def _closed(self) -> None:
        node = self.rt.node
        conn = self.conn
        code, reason = close_info(self.protocol)
        if code == 1009:
            node.count_error(ErrorCode.MESSAGE_TOO_LARGE, conn)
        try:
            await node.connection_closed(conn, code, reason)
        except Exception as exc:  # noqa: BLE001 - a server bug: logged and counted
            log.error("connection_close_failed", connection_id=conn.id, user=conn.user,
                      error=repr(exc), traceback=traceback.format_exc())
            node.count_error(ErrorCode.INTERNAL_ERROR, conn)


def close_info(protocol: Any) -> tuple[int | None, str]:
    """The close code and reason of an ended connection, for its ``closed`` record."""
    sent = protocol.close_sent
    rcvd = protocol.close_rcvd
    if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
        return int(rcvd.code), f"client closed: {rcvd.reason}" if rcvd.reason else (
            "client closed")
    if sent is not None:
        return int(sent.code), f"server closed: {sent.reason}" if sent.reason else (
            "server closed")
    return 1006, "connection lost without a close frame"
