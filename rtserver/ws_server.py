"""The WebSocket server layer: websockets' Sans-I/O protocol under one ``asyncio.Protocol``.

websockets implements the protocol twice over: a Sans-I/O core
(:class:`websockets.server.ServerProtocol`: bytes in, events and bytes out: the
opening handshake, framing, masking, size limits, the closing handshake,
permessage-deflate) and an asyncio layer on top of it (a handler task per
connection, an incoming-message assembler, futures for the handshake and for
the connection's end, a timeout context per handshake). rtserver keeps the core
and replaces the asyncio layer with this module: every connection is one
:class:`WsConnection` (an ``asyncio.Protocol``) that feeds the Sans-I/O protocol
in ``data_received`` and calls its application back synchronously. Measured on
this 2-core machine (docs/benchmarks.md, "Connection layer"): 10,000 clients
connecting at once cost the bare Sans-I/O core 1.18 s and websockets' asyncio
layer 2.33 s; an idle connection no longer holds a task, a chain of suspended
coroutines, an assembler and its futures. After a quick upgrade
(rtserver/ws_handshake.py) the frames are read and written by the compiled
``rtserver._wsframes.FrameProtocol`` (``WsSettings.frames``): websockets'
behaviour for an open connection without its generators; a connection swaps in
websockets' ``ServerProtocol`` for whatever only it does (:meth:`WsConnection._sansio`).

The application subclasses :class:`WsConnection` and implements its hooks:

- :meth:`WsConnection.on_request` for the opening handshake (the HTTP
  request: admit, refuse, or answer plain HTTP);
- :meth:`WsConnection.on_open` once the upgrade is accepted (the first frame it
  returns, the welcome, goes out with the ``101`` response in one write);
- :meth:`WsConnection.on_message` for every complete text (``str``) or binary
  (``bytes``) message, in order;
- :meth:`WsConnection.on_close` once the TCP connection has ended (every way a
  connection ends goes through it exactly once, after ``on_open``).

Bounds (each a documented configuration value of ``[server]``):
``open_timeout`` for the request to arrive and be answered, ``close_timeout``
for the peer to end the TCP connection after the closing handshake,
``max_message_bytes`` per message and ``max_incoming_queue`` messages buffered
before reading pauses (the application calls :meth:`WsConnection.pause_reading`
/ :meth:`WsConnection.resume_reading`).
"""

from __future__ import annotations

import asyncio
import http
import socket
import time
import traceback
from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar

from websockets.datastructures import Headers
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol

from rtserver import jsonlog
from rtserver.deadlines import DeadlineQueue
from rtserver.metrics import REGISTRY
from rtserver.ws_handshake import quick_request, switching_protocols

__all__ = ["WsConnection", "WsServer", "WsSettings"]

log = jsonlog.get_logger("rtserver.ws_server")
HANDSHAKE_TIMEOUTS = REGISTRY.counter(
    "rtserver_handshake_timeouts_total",
    "TCP connections dropped because the opening handshake did not finish within "
    "server.open_timeout")
CLOSE_TIMEOUTS = REGISTRY.counter(
    "rtserver_close_timeouts_total",
    "TCP connections dropped because the peer did not end them within server.close_timeout "
    "of the closing handshake")
INVALID_UTF8 = REGISTRY.counter(
    "rtserver_invalid_utf8_total", "Text messages refused with 1007: not valid UTF-8")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
# The headers a handled handshake request is left with (shared, empty): the Sans-I/O
# parser's generator frame keeps the request object for the connection's life.
_NO_HEADERS = Headers()


class WsSettings:
    """What every connection of one server shares: its bounds and protocol options."""

    __slots__ = ("close_timeout", "extensions", "frames", "logger", "max_queue", "max_size",
                 "open_timeout", "server_header")

    def __init__(self, *, max_size: int | None, max_queue: int, open_timeout: float,
                 close_timeout: float, compression: bool, server_header: str | None,
                 logger: Any, frames: type[Any] | None) -> None:
        self.max_size = max_size
        self.max_queue = max_queue
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.extensions: Sequence[ServerExtensionFactory] | None = (
            enable_server_permessage_deflate(None) if compression else None)
        self.server_header = server_header
        self.logger = logger
        #: The frame protocol of a connection whose upgrade :func:`quick_request` read
        #: (``rtserver._wsframes.FrameProtocol``, without compression), or None:
        #: websockets' ``ServerProtocol`` for every connection.
        self.frames = frames if self.extensions is None else None


class WsServer:
    """The listening socket and the set of live :class:`WsConnection` of one worker."""

    def __init__(self, connection_class: type[WsConnection], settings: WsSettings) -> None:
        self.connection_class = connection_class
        self.settings = settings
        #: Every connection from ``connection_made`` to ``connection_lost``.
        self.connections: set[WsConnection] = set()
        self.server: asyncio.Server | None = None
        #: The event loop it listens on (set by :meth:`listen`); its connections use it
        #: directly (``asyncio.get_running_loop()`` makes a getpid() call each time).
        self.loop: Any = None
        #: Opening handshakes bounded by ``server.open_timeout`` and closing handshakes
        #: by ``server.close_timeout`` (swept on the loop of :meth:`listen`).
        self.handshakes: DeadlineQueue[WsConnection] = DeadlineQueue(
            settings.open_timeout, WsConnection._open_expired)
        self.closings: DeadlineQueue[WsConnection] = DeadlineQueue(
            settings.close_timeout, WsConnection._close_expired)
        self._serving = False
        self._all_closed: asyncio.Future[None] | None = None

    async def listen(self, host: str | None, port: int | None, *,
                     sock: socket.socket | None = None, backlog: int,
                     ssl_options: dict[str, Any] | None = None) -> None:
        """Bind (or take ``sock``) and start accepting."""
        loop = self.loop = asyncio.get_running_loop()
        self.handshakes.bind(loop)
        self.closings.bind(loop)
        factory = self._factory
        opts: dict[str, Any] = dict(ssl_options or {})
        if sock is not None:
            self.server = await loop.create_server(factory, sock=sock, backlog=backlog, **opts)
        else:
            self.server = await loop.create_server(factory, host, port, backlog=backlog, **opts)
        self._serving = True

    def _factory(self) -> WsConnection:
        return self.connection_class(self)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        if self.server is None:
            return ()
        return tuple(self.server.sockets)

    def is_serving(self) -> bool:
        """Accepting and upgrading (False once :meth:`close` was called)."""
        return self._serving

    def close(self, code: int, reason: str) -> None:
        """Stop accepting; close every open connection with ``code``. A connection whose
        request has not arrived yet is ended at once; an upgrade answered after this is
        refused with 503 (``is_serving``)."""
        self._serving = False
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            state = connection.protocol.state
            if state is OPEN:
                connection.start_close(code, reason)
            elif state is CONNECTING and not connection.request_pending:
                connection.transport.close()

    async def wait_closed(self) -> None:
        """Until every connection has ended (after :meth:`close`)."""
        if self.connections:
            if self._all_closed is None:
                self._all_closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._all_closed)
        if self.server is not None:
            await self.server.wait_closed()
        self.handshakes.close()  # every entry was cancelled as its connection ended
        self.closings.close()

    def forget(self, connection: WsConnection) -> None:
        """``connection`` ended (called once, from its ``connection_lost``)."""
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None and (
                not self._all_closed.done()):
            self._all_closed.set_result(None)


class WsConnection(asyncio.Protocol):
    """One WebSocket connection: the Sans-I/O protocol fed from the transport.

    Exposes what the fan-out core and the heartbeat use of a websockets connection:
    ``protocol``, ``transport``, ``send_in_progress`` (always None: messages are sent
    whole), :meth:`send_data`, ``remote_address`` and :meth:`close`.
    """

    __slots__ = ("_close_entry", "_frag", "_frag_text", "_head", "_lost_waiter", "_open_entry",
                 "_quick_key",
                 "last_pong", "lost", "opened", "protocol", "request_pending", "server",
                 "transport")

    #: Never a fragmented send in progress (checked by the fan-out core).
    send_in_progress: ClassVar[None] = None

    def __init__(self, server: WsServer) -> None:
        settings = server.settings
        self.server = server
        #: The compiled frame protocol until a request needs websockets' (then a
        #: ``ServerProtocol``: :meth:`_sansio`).
        self.protocol: Any = (
            settings.frames(max_size=settings.max_size, logger=settings.logger)
            if settings.frames is not None else
            ServerProtocol(extensions=settings.extensions, max_size=settings.max_size,
                           logger=settings.logger))
        self.transport: Any = None
        #: Monotonic time of the last pong received (0: none yet).
        self.last_pong = 0.0
        #: The opening handshake's request arrived and its answer is being prepared.
        self.request_pending = False
        #: The upgrade was accepted (``on_open`` ran; ``on_close`` will).
        self.opened = False
        #: The TCP connection has ended (``connection_lost`` ran).
        self.lost = False
        #: The fragments of a message being received, and whether it is text.
        self._frag: list[bytes] | None = None
        self._frag_text = False
        #: The 101 response while ``on_open`` runs (written with its first frame).
        self._head: list[bytes] | None = None
        #: The key of a request read by :func:`quick_request` until it is answered
        #: (b"": websockets' parser reads the request; None: answered).
        self._quick_key: bytes | None = b"" if settings.extensions is None else None
        self._lost_waiter: asyncio.Future[None] | None = None
        #: This connection's entries in ``WsServer.handshakes`` until its request is
        #: answered, and in ``WsServer.closings`` once the closing handshake started.
        self._open_entry: list[Any] | None = None
        self._close_entry: list[Any] | None = None

    # ------------------------------------------------------------ application hooks

    def on_request(self, request: Request) -> Response | Awaitable[Response | None] | None:
        """The opening handshake's request: None accepts the upgrade, a Response answers
        (and ends the connection), an awaitable is awaited for one of those."""
        return None

    def on_open(self, request: Request) -> bytes | None:
        """The upgrade was accepted (``request``: the handshake's, emptied of its headers
        once this returns). Returns a first frame (framed, unmasked) to write with the
        101 response in one write, or None; the 101 goes out before anything written
        meanwhile (:meth:`send_data`)."""
        return None

    def on_message(self, data: str | bytes) -> None:
        """One complete message (``str`` for text, ``bytes`` for binary)."""

    def on_close(self) -> None:
        """The TCP connection ended (after :meth:`on_open`; exactly once)."""

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        """Register with the server and bound the opening handshake."""
        self.transport = transport
        self.server.connections.add(self)
        self._open_entry = self.server.handshakes.watch(self)

    def data_received(self, data: bytes) -> None:
        """Feed the protocol; answer the handshake or pass on the messages."""
        protocol = self.protocol
        if self._quick_key == b"":  # the connection's first bytes
            self._quick_key = None
            quick = quick_request(data)
            if quick is not None:
                request, self._quick_key = quick
                self._on_request_event(request)
                return
            protocol = self._sansio()
        protocol.receive_data(data)
        events = protocol.events_received()
        self.send_data()
        for event in events:
            if isinstance(event, Request):
                self._on_request_event(event)
            else:
                self._on_frame(event)
        if protocol.close_expected():
            self._watch_close()

    def eof_received(self) -> None:
        """The peer ended its side: the protocol answers (or notes the abrupt end)."""
        self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self.send_data()

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection ended: cancel the timers, tell the application."""
        self.lost = True
        self.protocol.receive_eof()  # idempotent; the state becomes CLOSED
        if self._open_entry is not None:
            self.server.handshakes.cancel(self._open_entry)
            self._open_entry = None
        if self._close_entry is not None:
            self.server.closings.cancel(self._close_entry)
            self._close_entry = None
        try:
            if self.opened:
                self.on_close()
        finally:
            self.server.forget(self)
            if self._lost_waiter is not None and not self._lost_waiter.done():
                self._lost_waiter.set_result(None)

    # ------------------------------------------------------------ handshake

    def _on_request_event(self, request: Request) -> None:
        self.request_pending = True
        try:
            answer = self.on_request(request)
        except Exception as exc:  # noqa: BLE001 - a server bug: logged, answered 500
            self._request_failed(exc)
            return
        if isinstance(answer, Awaitable):
            if self._quick_key:
                # No parser has the request: nothing more is read until it is answered.
                self.transport.pause_reading()
            self.server.loop.create_task(self._await_answer(request, answer))
            return
        self._respond(request, answer)

    async def _await_answer(self, request: Request,
                            answer: Awaitable[Response | None]) -> None:
        try:
            response = await answer
        except Exception as exc:  # noqa: BLE001 - a server bug: logged, answered 500
            self._request_failed(exc)
            return
        self._respond(request, response)

    def _request_failed(self, exc: Exception) -> None:
        log.error("process_request_failed", error=repr(exc))
        protocol = self._sansio()
        protocol.handshake_exc = exc
        self._respond(None, protocol.reject(
            http.HTTPStatus.INTERNAL_SERVER_ERROR,
            "Failed to open a WebSocket connection.\nSee server log for more information.\n"))

    def _respond(self, request: Request | None, response: Response | None) -> None:
        self.request_pending = False
        protocol = self.protocol
        key, self._quick_key = self._quick_key, None
        if protocol.state is not CONNECTING:
            return  # the connection ended while the answer was prepared
        if key and not self.transport.is_reading():
            self.transport.resume_reading()
        if self._open_entry is not None:
            self.server.handshakes.cancel(self._open_entry)
            self._open_entry = None
        settings = self.server.settings
        if response is None:
            assert request is not None
            if key and self.server.is_serving():
                self._open(request, [self._quick_101(key)])
                return
        protocol = self._sansio()
        if response is None:
            assert request is not None
            response = protocol.accept(request)
        if response.status_code == 101 and not self.server.is_serving():
            response = protocol.reject(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                       "Server is shutting down.\n")
        if settings.server_header is not None:
            response.headers["Server"] = settings.server_header
        protocol.send_response(response)
        if protocol.state is not OPEN:
            self.send_data()
            if protocol.close_expected():
                self._watch_close()
            return
        assert request is not None
        self._open(request, protocol.data_to_send())

    def _quick_101(self, key: bytes) -> bytes:
        """The 101 response to a quick request (the bytes websockets' accept() and
        send_response() make for it), with the protocol switched to OPEN."""
        protocol = self.protocol
        if type(protocol) is ServerProtocol:
            protocol.state = OPEN
            # Its request parser never ran: the new parser starts at the frames.
            protocol.parser = protocol.parse()
            next(protocol.parser)
        else:
            protocol.start()
        protocol.logger.info("connection open")
        return switching_protocols(key, self.server.settings.server_header)

    def _sansio(self) -> ServerProtocol:
        """websockets' protocol, for what only it does (a request its parser must read,
        an HTTP answer, ``accept``): swapped in for the frame protocol before any byte
        went to it (the connection is still CONNECTING)."""
        protocol = self.protocol
        if type(protocol) is not ServerProtocol:
            settings = self.server.settings
            protocol = self.protocol = ServerProtocol(
                extensions=settings.extensions, max_size=settings.max_size,
                logger=settings.logger)
        return protocol

    def _open(self, request: Request, head: list[bytes]) -> None:
        self.opened = True
        # The 101 waits for on_open's first frame: one write, one segment for both.
        self._head = head
        try:
            first = self.on_open(request)
        except Exception as exc:  # noqa: BLE001 - a server bug: logged, closed 1011
            log.error("connection_open_failed", error=repr(exc),
                      traceback=traceback.format_exc())
            self.start_close(1011, "internal error")
            return
        finally:
            # websockets' parser, when it read the request, keeps it in its generator frame
            # for the connection's life: empty it.
            request.headers = _NO_HEADERS
            request.path = "/"
        head = self._head
        if head is not None:
            self._head = None
            if first is not None:
                head.append(first)
            self.transport.write(b"".join(head))

    def _open_expired(self) -> None:
        self._open_entry = None
        if self.protocol.state is CONNECTING:
            HANDSHAKE_TIMEOUTS.inc()
            log.debug("handshake_timeout", timeout=self.server.settings.open_timeout,
                      request_arrived=self.request_pending)
            self.transport.abort()

    # ------------------------------------------------------------ frames

    def _on_frame(self, frame: Any) -> None:
        opcode = frame.opcode
        if opcode is _TEXT or opcode is _BINARY:
            if frame.fin:
                self._deliver(bytes(frame.data), opcode is _TEXT)
                return
            # The first fragment of a message (websockets bounds the whole message
            # by max_size and refuses interleaved data frames).
            self._frag = [bytes(frame.data)]
            self._frag_text = opcode is _TEXT
            return
        if opcode is _CONT:
            frag = self._frag
            if frag is None:
                return  # the protocol refuses a stray continuation before it gets here
            frag.append(bytes(frame.data))
            if frame.fin:
                self._frag = None
                self._deliver(b"".join(frag), self._frag_text)
            return
        if opcode is _PONG:
            self.on_pong(bytes(frame.data))
        # PING is answered and CLOSE handled by the protocol itself.

    def _deliver(self, data: bytes, text: bool) -> None:
        if not text:
            self.on_message(data)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError:
            self._invalid_utf8()
            return
        self.on_message(message)

    def on_pong(self, data: bytes) -> None:
        """A pong arrived (recorded in ``last_pong``)."""
        self.last_pong = time.monotonic()

    def _invalid_utf8(self) -> None:
        INVALID_UTF8.inc()
        self.protocol.fail(1007, "invalid UTF-8 in a text message")
        self.send_data()
        self._watch_close()

    # ------------------------------------------------------------ sending and closing

    def send_data(self) -> None:
        """Write what the protocol has to send (an empty chunk: end the TCP stream)."""
        transport = self.transport
        if self._head is not None:  # the 101 first (on_open is running)
            transport.write(b"".join(self._head))
            self._head = None
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except (OSError, RuntimeError) as exc:
                    # The peer is gone already; connection_lost follows.
                    log.debug("write_eof_failed", error=repr(exc))
            else:
                transport.close()

    def start_close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (once) and bound the peer's answer."""
        protocol = self.protocol
        if protocol.state is OPEN:
            protocol.send_close(code, reason)
            self.send_data()
            self._watch_close()
        elif protocol.state is CONNECTING:
            self.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake with ``code``; returns once the TCP connection ended
        (at most ``server.close_timeout`` after the close frame)."""
        self.start_close(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Until the TCP connection has ended."""
        if self.lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = self.server.loop.create_future()
        await asyncio.shield(self._lost_waiter)

    def _watch_close(self) -> None:
        if self._close_entry is None and self.transport is not None and not self.lost:
            self._close_entry = self.server.closings.watch(self)

    def _close_expired(self) -> None:
        self._close_entry = None
        if self in self.server.connections:
            CLOSE_TIMEOUTS.inc()
            log.debug("close_timeout", timeout=self.server.settings.close_timeout)
            self.transport.abort()

    # ------------------------------------------------------------ properties

    @property
    def remote_address(self) -> Any:
        """The TCP peer ``(host, port)`` (None once the transport is gone)."""
        transport = self.transport
        return transport.get_extra_info("peername") if transport is not None else None
