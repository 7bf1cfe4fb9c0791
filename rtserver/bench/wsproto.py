"""Minimal client side of RFC 6455 for the load generator.

Only what the generator needs: the opening handshake, masked client frames and a
parser for unmasked server frames. No extensions are offered, so the server never
compresses. Everything works on ``bytes`` without per-frame objects.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct

__all__ = [
    "GUID",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "accept_key",
    "handshake_request",
    "masked_frame",
    "parse_frames",
    "parse_handshake_response",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

_STATUS_RE = re.compile(rb"^HTTP/1\.1 (\d{3})")
_ACCEPT_RE = re.compile(rb"\r\nsec-websocket-accept:\s*([A-Za-z0-9+/=]+)", re.IGNORECASE)


class FrameError(Exception):
    """The server sent something that is not valid WebSocket framing."""


def accept_key(key: bytes) -> bytes:
    """Expected ``Sec-WebSocket-Accept`` for the base64 ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """Return ``(request bytes, expected accept value)`` for one connection."""
    key = base64.b64encode(os.urandom(16))
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return req, accept_key(key)


def parse_handshake_response(head: bytes, expected_accept: bytes) -> str | None:
    """Check the response head (up to and without the blank line); return an error or None."""
    m = _STATUS_RE.match(head)
    if m is None:
        return "handshake: not an HTTP/1.1 response"
    if m.group(1) != b"101":
        return f"handshake: HTTP status {m.group(1).decode()}"
    a = _ACCEPT_RE.search(head)
    if a is None:
        return "handshake: Sec-WebSocket-Accept missing"
    if a.group(1) != expected_accept:
        return "handshake: Sec-WebSocket-Accept mismatch"
    return None


def masked_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One FIN frame with a random 4-byte masking key (client frames must be masked)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if n == 0:
        return head + mask
    reps = mask * (n // 4 + 1)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_frames(buf: bytes, out: list[tuple[int, bool, bytes]]) -> int:
    """Append complete ``(opcode, fin, payload)`` frames of ``buf`` to ``out``.

    Returns the number of bytes consumed; the rest is an incomplete frame to keep.
    Raises :class:`FrameError` on a masked server frame or reserved bits.
    """
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b1 & 0x80:
            raise FrameError("server frame is masked (RFC 6455 5.1 forbids it)")
        if b0 & 0x70:
            raise FrameError("reserved bits set without a negotiated extension")
        n = b1 & 0x7F
        hdr = 2
        if n == 126:
            if end - pos < 4:
                break
            n = (buf[pos + 2] << 8) | buf[pos + 3]
            hdr = 4
        elif n == 127:
            if end - pos < 10:
                break
            n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            hdr = 10
        if end - pos < hdr + n:
            break
        start = pos + hdr
        out.append((b0 & 0x0F, bool(b0 & 0x80), buf[start : start + n]))
        pos = start + n
    return pos
