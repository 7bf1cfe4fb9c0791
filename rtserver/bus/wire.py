"""Framing of the embedded bus (worker <-> supervisor hub over a Unix socket).

Every frame is one fixed header followed by a key and a payload::

    length  u32   bytes after this field (header rest + key + payload)
    kind    u8    frame kind (the ``K_*`` constants)
    req     u32   request id; in PUB the room's epoch number (see below)
    seq     u64   room seq (PUB, ACK of PUBLISH / POSITION / ADD_INTEREST), else 0
    keylen  u16   length of the UTF-8 key (room or user name)
    key     keylen bytes
    payload the rest: a JSON body passed through untouched, or msgpack for
            control frames (presence members, snapshots, metrics, health)

Stream positions: the server names a room's epoch ``"<instance>.<n>"``; the
instance is in the HELLO answer (msgpack ``{"instance": ...}``), ``n`` travels
as the ``req`` of a ``PUB`` and as :data:`ACK_POSITION` (``u32 n``) in the
answers to POSITION and ADD_INTEREST (the room's position when the interest was
registered: its later PUBs to that worker come behind the answer), or
:data:`ACK_PUBLISH` (``u32 n, u8 status``) to PUBLISH.
A PUBLISH payload is :data:`PUBLISH_HEAD` (``f64 deadline`` on the machine's
monotonic clock, ``f64 accepted``: the publishing worker's ``time.monotonic()``
when it handed the publication to the bus, ``u8 flags``
(:data:`PUBLISH_KEY_GENERATED`: the key was made by the client for its own
retry, not given by the caller), ``u16 keylen``), the idempotency key, then the
body. A PUB payload is :data:`PUB_HEAD` (``f64 accepted``, copied from the
PUBLISH) then the body: every worker observes publish accepted → delivered on
the one clock of the machine. RECOVER and its answer are msgpack.

Room bodies and user payloads are never decoded or re-encoded by the hub: it
slices the key and hands the payload bytes on, so a message costs one header
pack per hop. :class:`FrameReader` splits a byte stream into frames without
copying more than once.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ACK_POSITION",
    "ACK_PUBLISH",
    "HEADER",
    "HEADER_SIZE",
    "K_ACK",
    "K_ADD_INTEREST",
    "K_ADD_USER",
    "K_COLLECT",
    "K_COLLECT_REPLY",
    "K_EVENT",
    "K_HELLO",
    "K_HISTORY_INFO",
    "K_NAMES",
    "K_POSITION",
    "K_PRESENCE",
    "K_PRESENCE_JOIN",
    "K_PRESENCE_LEAVE",
    "K_PUB",
    "K_PUBLISH",
    "K_RECOVER",
    "K_REMOVE_INTEREST",
    "K_REMOVE_USER",
    "K_ROOM_EVENT",
    "K_SEND_USER",
    "K_STATUS",
    "K_USER",
    "MAX_FRAME",
    "PUBLISH_APPLIED",
    "PUBLISH_DUPLICATE",
    "PUBLISH_EXPIRED",
    "PUBLISH_HEAD",
    "PUBLISH_KEY_GENERATED",
    "PUB_HEAD",
    "Frame",
    "FrameError",
    "FrameReader",
    "encode",
]

HEADER: Final = struct.Struct("!IBIQH")
HEADER_SIZE: Final = HEADER.size
_REST: Final = struct.Struct("!BIQH")
_LEN: Final = struct.Struct("!I")
#: PUBLISH payload head: deadline and accepted time (monotonic seconds), flags, key length.
PUBLISH_HEAD: Final = struct.Struct("!ddBH")
#: PUB payload head: the accepted time of the PUBLISH (monotonic seconds).
PUB_HEAD: Final = struct.Struct("!d")
#: PUBLISH flag: the key only serves the client's retry until the deadline.
PUBLISH_KEY_GENERATED: Final = 1
#: ACK payload of PUBLISH: epoch number, status (``PUBLISH_*``).
ACK_PUBLISH: Final = struct.Struct("!IB")
#: ACK payload of POSITION: epoch number.
ACK_POSITION: Final = struct.Struct("!I")
#: PUBLISH statuses: sequenced now; a key already applied (original position);
#: refused because it arrived after its deadline (not applied).
PUBLISH_APPLIED: Final = 0
PUBLISH_DUPLICATE: Final = 1
PUBLISH_EXPIRED: Final = 2
#: Hard upper bound of one frame (64 MiB): a larger length means a corrupt stream.
MAX_FRAME: Final = 64 * 1024 * 1024

# worker -> hub requests (every one is answered by K_ACK with the same req)
K_HELLO: Final = 1
K_PUBLISH: Final = 2
K_POSITION: Final = 3
K_ADD_INTEREST: Final = 4
K_REMOVE_INTEREST: Final = 5
K_ADD_USER: Final = 6
K_REMOVE_USER: Final = 7
K_ROOM_EVENT: Final = 8
K_SEND_USER: Final = 9
K_PRESENCE_JOIN: Final = 10
K_PRESENCE_LEAVE: Final = 11
K_PRESENCE: Final = 12
K_STATUS: Final = 13
K_COLLECT_REPLY: Final = 14
K_RECOVER: Final = 15
K_HISTORY_INFO: Final = 16
# hub -> worker
K_ACK: Final = 32
K_PUB: Final = 34
K_EVENT: Final = 35
K_USER: Final = 36
K_COLLECT: Final = 37

#: Names of the frame kinds for logs and metrics labels.
K_NAMES: Final[dict[int, str]] = {
    K_HELLO: "hello", K_PUBLISH: "publish", K_POSITION: "position",
    K_ADD_INTEREST: "add_interest", K_REMOVE_INTEREST: "remove_interest",
    K_ADD_USER: "add_user", K_REMOVE_USER: "remove_user", K_ROOM_EVENT: "room_event",
    K_SEND_USER: "send_user", K_PRESENCE_JOIN: "presence_join",
    K_PRESENCE_LEAVE: "presence_leave", K_PRESENCE: "presence", K_STATUS: "status",
    K_COLLECT_REPLY: "collect_reply", K_RECOVER: "recover", K_HISTORY_INFO: "history_info",
    K_ACK: "ack", K_PUB: "pub", K_EVENT: "event", K_USER: "user", K_COLLECT: "collect",
}


class FrameError(Exception):
    """The byte stream is not a valid frame sequence (the connection must be closed)."""


class Frame:
    """One decoded frame; ``key`` is text, ``payload`` untouched bytes."""

    __slots__ = ("key", "kind", "payload", "req", "seq")

    def __init__(self, kind: int, req: int, seq: int, key: str, payload: bytes) -> None:
        self.kind = kind
        self.req = req
        self.seq = seq
        self.key = key
        self.payload = payload

    def __repr__(self) -> str:
        return (f"Frame({K_NAMES.get(self.kind, self.kind)}, req={self.req}, seq={self.seq}, "
                f"key={self.key!r}, payload={len(self.payload)}B)")


def encode(kind: int, req: int = 0, seq: int = 0, key: str = "", payload: bytes = b"") -> bytes:
    """One frame as bytes (the header plus key plus payload)."""
    kb = key.encode()
    if len(kb) > 0xFFFF:
        raise FrameError(
            f"bus key of {len(kb)} bytes exceeds 65535. "
            "Required action: use shorter room/user names"
        )
    length = HEADER_SIZE - 4 + len(kb) + len(payload)
    if length > MAX_FRAME:
        raise FrameError(
            f"bus frame of {length} bytes exceeds {MAX_FRAME}. "
            "Required action: send smaller messages"
        )
    return HEADER.pack(length, kind, req, seq, len(kb)) + kb + payload


class FrameReader:
    """Incremental splitter: feed bytes, get complete frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Append ``data`` and return every frame now complete (in stream order)."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        mv = memoryview(buf)
        try:
            while end - pos >= HEADER_SIZE:
                (length,) = _LEN.unpack_from(buf, pos)
                if length < HEADER_SIZE - 4 or length > MAX_FRAME:
                    raise FrameError(f"invalid bus frame length {length}")
                if end - pos - 4 < length:
                    break
                kind, req, seq, keylen = _REST.unpack_from(buf, pos + 4)
                kstart = pos + HEADER_SIZE
                pstart = kstart + keylen
                fend = pos + 4 + length
                if pstart > fend:
                    raise FrameError(f"bus frame key length {keylen} exceeds frame length {length}")
                try:
                    key = str(mv[kstart:pstart], "utf-8") if keylen else ""
                except UnicodeDecodeError as exc:
                    raise FrameError(f"bus frame key is not UTF-8 ({exc})") from exc
                frames.append(Frame(kind, req, seq, key, bytes(mv[pstart:fend])))
                pos = fend
        finally:
            mv.release()
        if pos:
            del buf[:pos]
        return frames

    def pending(self) -> int:
        """Bytes buffered of an incomplete frame."""
        return len(self._buf)
