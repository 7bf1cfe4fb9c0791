"""Less per-connection state and work inside websockets' server connections.

Three things websockets builds for every connection that rtserver does not need
one of per connection (measured with ``python -m rtserver.bench.conn_memory``,
docs/benchmarks.md, "Connect storm and memory (issue 15)"):

- a ``logging.LoggerAdapter`` carrying a weak proxy to the connection (about
  260 B), used only by formatters that print ``record.websocket``; rtserver's
  JSON bridge does not. :class:`ConnectionLogger` is one shared logger per server
  instead, and it skips building the log record of websockets' per-connection
  info chatter ("connection open", ...) unless debug is enabled (the JSON bridge
  writes those lines at debug only, so nothing that was written is lost);
- the handshake request's headers (about 3 KiB) and the request-received future,
  kept for the connection's lifetime (:func:`open_connection` drops them), and
  locals of the handler's frame (the peer address tuple);
- two empty ``collections.deque`` (about 760 B each: a deque allocates a block
  of 64 slots at once) for the drain waiters and the incoming frames;
  :class:`ListQueue` is an empty list (56 B) with the deque methods websockets
  calls, for queues that hold a few items at most (incoming frames are bounded
  by ``server.max_incoming_queue``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

from rtserver import jsonlog

if TYPE_CHECKING:
    from rtserver.connection import Connection
    from rtserver.node import Node

__all__ = ["ConnectionLogger", "ListQueue", "open_connection", "slim_connection", "slim_frames"]

#: websockets' info lines of one connection's life, which the JSON bridge writes
#: at debug (rtserver's own ``connection_state`` lines carry the same with context).
PER_CONNECTION_INFO = frozenset({
    "connection open", "connection closed", "HTTP response sent (%d %s)",
    "connection rejected (%d %s)",
})


class ListQueue(list[Any]):
    """A list with the deque methods websockets' queues use (``popleft``,
    ``extendleft``); ``append``, ``extend``, ``remove``, ``clear``, ``len`` and
    iteration are the list's own. O(n) at the left end, for queues of a few items."""

    __slots__ = ()

    def popleft(self) -> Any:
        """Remove and return the first item (IndexError when empty, as a deque)."""
        return self.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        """Insert ``items`` at the front one by one, as ``deque.extendleft`` does
        (so the last one given ends up first)."""
        self[:0] = list(items)[::-1]


class ConnectionLogger:
    """The logger every websockets connection of one server shares.

    Delegates to ``logging.getLogger(name)``; websockets' per-connection info
    lines (:data:`PER_CONNECTION_INFO`) are passed on only when rtserver's log
    level is debug, the only level at which they were ever written.
    """

    __slots__ = ("logger",)

    def __init__(self, name: str = "websockets.server") -> None:
        self.logger = logging.getLogger(name)

    def isEnabledFor(self, level: int) -> bool:
        """Whether the underlying logger handles ``level``."""
        return self.logger.isEnabledFor(level)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log like ``logging.Logger.log``, without the per-connection chatter."""
        if (level == logging.INFO and msg in PER_CONNECTION_INFO
                and not _DEBUG_ENABLED.enabled(logging.DEBUG)):
            return
        self.logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.debug``."""
        self.logger.debug(msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.info`` without the per-connection chatter."""
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.warning``."""
        self.logger.warning(msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.error``."""
        self.logger.error(msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        """``logging.Logger.exception``."""
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.critical``."""
        self.logger.critical(msg, *args, **kwargs)


_DEBUG_ENABLED = jsonlog.get_logger("websockets.server")


def slim_connection(connection: Any, logger: ConnectionLogger) -> None:
    """Give a just-built websockets ``ServerConnection`` the shared ``logger`` and a
    list for its drain waiters, in place of its own adapter and deque.

    Only attributes websockets already set are replaced (new ones would turn the
    object's key-sharing ``__dict__`` into a private one, about 1.8 KiB).
    """
    connection.logger = logger
    connection.protocol.logger = logger
    if not connection.drain_waiters:
        connection.drain_waiters = ListQueue()


def slim_frames(connection: Any) -> None:
    """After ``connection_made`` (which builds the incoming-message assembler): a list
    for the incoming frames in place of the assembler's deque."""
    frames = connection.recv_messages.frames
    if not frames.queue:
        frames.queue = ListQueue()


# The headers every handled handshake request is left with (shared, empty).
_NO_HEADERS = Headers()


def take_request(ws: Any) -> tuple[str | None, str | None]:
    """The URL token and the User-Agent; then the handshake request and response are
    dropped (about 3 KiB of headers per connection otherwise kept for its lifetime), and
    the request-received future (done) is replaced by the connection-lost one."""
    request = ws.request
    assert request is not None
    tokens = parse_qs(urlsplit(request.path).query).get("token")
    user_agent = request.headers.get("User-Agent")  # None: the client sent none
    # websockets needs ws.request to stay set, and its frame parser keeps a
    # reference to the same object: empty it in place.
    request.headers = _NO_HEADERS
    request.path = "/"
    ws.response = None
    # Awaited only before the request arrived; an existing attribute keeps the
    # connection's key-sharing __dict__.
    ws.request_rcvd = ws.connection_lost_waiter
    return (tokens[0] if tokens else None), user_agent


def open_connection(node: Node, ws: Any) -> tuple[Connection, str | None]:
    """Register a just-upgraded connection with the node: ``(connection, URL token)``.

    In a function of its own so that the handler's long-lived frame keeps none of
    the handshake's values (the peer address tuple, the User-Agent)."""
    tok, user_agent = take_request(ws)
    remote = ws.remote_address
    remote_text = f"{remote[0]}:{remote[1]}" if remote else "unknown"
    # websockets gave the connection a random UUID (uuid4) already: no second one.
    return node.open_connection(ws, str(ws.id), remote_text, user_agent), tok
