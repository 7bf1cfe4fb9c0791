"""Less per-connection state and work in the connections of rtserver/ws_server.py.

- :class:`ConnectionLogger`: one logger shared by every connection's Sans-I/O
  protocol of a server (websockets would otherwise wrap a ``LoggerAdapter`` and a
  weak proxy around each), which skips building the log record of websockets'
  per-connection info chatter ("connection open", ...) unless debug is enabled
  (the JSON bridge writes those lines at debug only, so nothing that was written
  is lost);
- :func:`open_connection` registers the connection with the node (under
  :func:`connection_id`, made without a ``UUID`` object) from the
  handshake request without keeping the request's values (the peer address
  tuple, the User-Agent, the URL token) anywhere for the connection's life.

Measured with ``python -m rtserver.bench.conn_memory`` (docs/benchmarks.md,
"Connect storm and memory (issue 15)").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.server import ServerProtocol

from rtserver import jsonlog

if TYPE_CHECKING:
    from rtserver.connection import Connection
    from rtserver.node import Node

__all__ = ["ConnectionLogger", "connection_id", "open_connection", "url_token"]

#: websockets' info lines of one connection's life, which the JSON bridge writes
#: at debug (rtserver's own ``connection_state`` lines carry the same with context).
PER_CONNECTION_INFO = frozenset({
    "connection open", "connection closed", "HTTP response sent (%d %s)",
    "connection rejected (%d %s)",
})


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


def url_token(request: Any) -> str | None:
    """The ``?token=`` of the handshake request (None: the URL carries none): the first
    non-empty ``token`` parameter, as ``urllib.parse.parse_qs`` reads it."""
    path: str = request.path
    query = path.partition("?")[2]
    if not query:
        return None
    if "%" in query or "+" in query or "#" in query:  # escapes or a fragment: parse_qs
        tokens = parse_qs(urlsplit(path).query).get("token")
        return tokens[0] if tokens else None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "token" and value:
            return value
    return None


def connection_id(protocol: Any) -> str:
    """The connection's id: the random UUID (uuid4) of its protocol as text, not a second
    one. websockets' ``ServerProtocol`` made its ``UUID`` already; the compiled frame
    protocol makes the text alone (``FrameProtocol.id_text``)."""
    if isinstance(protocol, ServerProtocol):
        return str(protocol.id)
    text: str = protocol.id_text
    return text


def open_connection(node: Node, ws: Any, request: Any, *, welcome: bool = True) -> Connection:
    """Register a just-upgraded connection with the node under :func:`connection_id`
    (``welcome``: as in :meth:`Node.open_connection`)."""
    remote = ws.remote_address
    remote_text = f"{remote[0]}:{remote[1]}" if remote else "unknown"
    # None: the client sent no User-Agent
    return node.open_connection(ws, connection_id(ws.protocol), remote_text,
                                request.headers.get("User-Agent"), welcome=welcome)
