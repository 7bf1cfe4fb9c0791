"""The opening handshake's common case, read and answered without websockets' general
parsers (rtserver/ws_server.py uses it; docs/architecture.md, "One connection").

A request that a browser or client library sends (``GET``, HTTP/1.1, exactly one
``Upgrade: websocket``, a ``Connection`` listing ``upgrade``, exactly one valid
``Sec-WebSocket-Key`` and ``Sec-WebSocket-Version: 13``, no extension or subprotocol
offered) gets the same ``101`` websockets would answer; anything else goes to
websockets' own parser and ``ServerProtocol.accept()``, which answer it exactly as
before (every refusal and its message). Measured per request on this machine:
websockets' parser 15.8 µs and its accept and serialization 11.1 µs, against 4.4 µs for
:func:`quick_request` (docs/benchmarks.md, "Connect path, again").
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import time

from websockets.datastructures import Headers
from websockets.http11 import Request

__all__ = ["quick_request", "switching_protocols"]


class _HttpDate:
    """The HTTP ``Date`` header value, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        """RFC 9110 IMF-fixdate of the current second."""
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = email.utils.formatdate(second, usegmt=True)
        return self.text


_DATE = _HttpDate()
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


#: A whole common upgrade request in one chunk: ``GET``, HTTP/1.1, at most 128 header
#: lines with websockets' own name and value grammar, nothing after the blank line.
_QUICK_HEAD = re.compile(
    rb"GET ([\x21-\x7e]+) HTTP/1\.1\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\x09\x20-\x7e\x80-\xff]*\r\n){1,128})\r\n")
#: What websockets' request parser allows in one line (a longer request goes to it).
_QUICK_MAX = 8192
_SET_HEADER = getattr(Headers, "set_insecure", Headers.__setitem__)  # websockets < 17: []=


def quick_request(data: bytes) -> tuple[Request, bytes] | None:
    """The request and its ``Sec-WebSocket-Key`` when ``data`` is exactly one common
    upgrade request (see the module docstring); None sends it to websockets' parser,
    which answers everything else (refusals included) as before."""
    if len(data) > _QUICK_MAX:
        return None
    m = _QUICK_HEAD.fullmatch(data)
    if m is None:
        return None
    headers = Headers()
    upgrade = connection = key = version = None
    for line in m.group(2).split(b"\r\n")[:-1]:
        raw_name, _, raw_value = line.partition(b":")
        name = raw_name.decode("ascii")
        value = raw_value.strip(b" \t").decode("iso-8859-1")
        _SET_HEADER(headers, name, value)
        lower = name.lower()
        if lower == "upgrade":
            upgrade = value if upgrade is None else ""
        elif lower == "connection":
            connection = value if connection is None else ""
        elif lower == "sec-websocket-key":
            key = value if key is None else ""
        elif lower == "sec-websocket-version":
            version = value if version is None else ""
        elif lower in ("transfer-encoding", "content-length", "sec-websocket-extensions",
                       "sec-websocket-protocol"):
            return None
    if (upgrade is None or upgrade.lower() != "websocket" or version != "13"
            or not key or connection is None
            or "upgrade" not in [t.strip().lower() for t in connection.split(",")]):
        return None
    try:
        raw = base64.b64decode(key.encode(), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(raw) != 16:
        return None
    return Request(m.group(1).decode("ascii"), headers), key.encode()


def switching_protocols(key: bytes, server_header: str | None) -> bytes:
    """The ``101`` response to a request with ``Sec-WebSocket-Key: key``: the bytes
    websockets' ``accept()`` and ``send_response()`` make for it (``Server`` last)."""
    return b"".join((
        b"HTTP/1.1 101 Switching Protocols\r\nDate: ", _DATE.now().encode(),
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        base64.b64encode(hashlib.sha1(key + _GUID).digest()),
        b"" if server_header is None else b"\r\nServer: " + server_header.encode(),
        b"\r\n\r\n"))
