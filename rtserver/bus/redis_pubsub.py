"""The Redis bus's pub/sub connection: a minimal RESP2 reader (no redis-py).

:class:`Subscriber` parses the receive buffer in place (about twice the
throughput of redis-py's PubSub in ``rtserver/bench/bus_micro.py``) and hands each
``message`` push and subscription confirmation to its :class:`SubscriberOwner`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Protocol, cast

from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

from rtserver.jsonlog import get_logger

__all__ = ["RespError", "Subscriber", "SubscriberOwner", "open_subscriber", "pack", "parse"]

_log = get_logger("rtserver.bus.redis")


class SubscriberOwner(Protocol):
    """What a :class:`Subscriber` reports to (the Redis bus)."""

    def on_message(self, channel: bytes, data: bytes) -> None:
        """A ``message`` push: ``data`` published on ``channel``."""

    def on_subscribed(self, channel: bytes) -> None:
        """Redis confirmed the subscription of ``channel``."""

    def on_subscriber_lost(self, sub: Subscriber, exc: Exception | None) -> None:
        """The connection closed (``exc`` is the error, None on a clean close)."""


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def pack(*args: bytes) -> bytes:
    """A RESP command (array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class RespError(Exception):
    """An error reply (``-ERR ...``) on the subscriber connection."""


def parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    """One RESP2 value at ``pos``: ``(value, next position)``, None when incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 0x24:  # $ bulk string
        size = int(buf[pos + 1:end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if len(buf) < stop + 2:
            return None
        if buf[stop:stop + 2] != b"\r\n":
            raise ValueError(f"bulk string of {size} bytes not followed by CRLF at {stop}")
        return bytes(buf[start:stop]), stop + 2
    if kind == 0x2A:  # * array
        count = int(buf[pos + 1:end])
        items: list[Any] = []
        nxt = end + 2
        for _ in range(count):
            parsed = parse(buf, nxt)
            if parsed is None:
                return None
            value, nxt = parsed
            items.append(value)
        return items, nxt
    if kind == 0x3A:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 0x2B:  # + simple string
        return bytes(buf[pos + 1:end]), end + 2
    if kind == 0x2D:  # - error
        return RespError(bytes(buf[pos + 1:end]).decode(errors="replace")), end + 2
    raise ValueError(f"unexpected RESP type byte {kind:#x} at {pos}")


class Subscriber(asyncio.Protocol):
    """The worker's pub/sub connection: a minimal RESP2 reader.

    redis-py's PubSub parses every message through several layers of Python
    (``StreamReader.readline`` per element); this protocol parses the buffer in
    place and hands ``message`` pushes straight to its owner (the bus). Commands: SUBSCRIBE,
    UNSUBSCRIBE (confirmations are pushes), AUTH and PING (ordered replies).
    """

    def __init__(self, owner: SubscriberOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.replies: deque[asyncio.Future[Any]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                parsed = parse(buf, pos)
                if parsed is None:
                    break
                value, pos = parsed
                self._dispatch(value)
        except (ValueError, IndexError) as exc:
            _log.error("bus_subscriber_protocol_error", bus="redis", error=_err(exc),
                       action="the subscriber connection is closed and re-established")
            if self.transport is not None:
                self.transport.abort()
            return
        finally:
            del buf[:pos]

    def _dispatch(self, value: Any) -> None:
        if type(value) is list and value and type(value[0]) is bytes:
            kind = value[0]
            if kind == b"message":
                self.owner.on_message(value[1], value[2])
                return
            if kind == b"subscribe":
                self.owner.on_subscribed(value[1])
                return
            if kind == b"unsubscribe":
                return
            if kind == b"pong":
                value = b"PONG"
        if self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                if isinstance(value, RespError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
            return
        _log.error("bus_subscriber_unexpected_reply", bus="redis", reply=repr(value)[:200])

    def connection_lost(self, exc: Exception | None) -> None:
        replies, self.replies = self.replies, deque()
        for fut in replies:
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"subscriber connection lost: {exc}"))
        self.owner.on_subscriber_lost(self, exc)

    def send(self, *args: bytes) -> None:
        """Write one command (no reply expected: SUBSCRIBE / UNSUBSCRIBE)."""
        if self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("subscriber connection closed")
        self.transport.write(pack(*args))

    async def request(self, timeout: float, *args: bytes) -> Any:
        """Write one command and wait for its ordered reply (AUTH, PING)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies.append(fut)
        self.send(*args)
        async with asyncio.timeout(timeout):
            return await fut

    def close(self) -> None:
        """Close the connection (connection_lost follows)."""
        if self.transport is not None:
            self.transport.abort()


async def open_subscriber(url: str, owner: SubscriberOwner, connect_timeout: float,
                          request_timeout: float) -> Subscriber:
    """Connect a :class:`Subscriber` to the Redis of ``url`` (TCP, TLS or Unix) and AUTH."""
    params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout):
        if "path" in params:
            _, sub = await loop.create_unix_connection(lambda: Subscriber(owner), params["path"])
        else:
            ssl_context = ssl.create_default_context() if url.startswith("rediss://") else None
            _, sub = await loop.create_connection(
                lambda: Subscriber(owner), params.get("host", "localhost"),
                params.get("port", 6379), ssl=ssl_context)
    password = params.get("password")
    if password:
        username = params.get("username")
        auth = ([b"AUTH", username.encode(), password.encode()] if username
                else [b"AUTH", password.encode()])
        try:
            await sub.request(request_timeout, *auth)
        except BaseException:
            sub.close()
            raise
    return sub
