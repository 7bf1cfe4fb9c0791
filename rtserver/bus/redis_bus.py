"""Redis bus: rooms, users and presence across machines (redis-py asyncio).

Keys and channels (``P`` = ``key_prefix``)::

    P:epoch          string   random id set once per Redis dataset (data-loss detection)
    P:seq:<room>     integer  the room's last seq (INCR)
    P:hist:<room>    list     the last ``history_size`` messages, newest first
    P:pres:<room>    zset     presence: member msgpack([user, connection_id]),
                              score = expiry (ms, Redis clock)
    P:room:<room>    channel  room publications and room events
    P:user:<user>    channel  user messages
    P:node:<node>    channel  this worker's own channel (keeps the subscriber
                              connection subscribed even with no interest)

Publishing is one Lua script (``EVALSHA``): check the epoch, ``INCR`` the
room seq, ``LPUSH``/``LTRIM`` the history and ``PUBLISH`` the message — one
atomic step, so every subscriber connection receives a room's messages in seq
order. Publishes issued in the same loop tick go out in one pipeline (at most
``publish_batch_max`` per round trip), in call order.

Channel messages are binary: ``b"P" + seq + b"\\n" + origin + b"\\n" + body``
for publications, ``b"E" + origin + b"\\n" + payload`` for room events and
``b"U" + origin + b"\\n" + payload`` for user messages (``origin`` = node id).
Every worker, the publisher included, receives its publications through its
subscription, so there is no echo to filter out and local and remote
subscribers see the same order (``publish()`` may return before or after the
publication reached ``on_publication``).

One pub/sub connection per worker subscribes the channels of rooms and users
with local interest (SUBSCRIBE on the first, UNSUBSCRIBE after the last);
``add_interest`` returns once Redis confirmed the subscription. That
connection is read by :class:`_Subscriber`, a minimal RESP2 protocol that
parses the receive buffer in place (about twice the throughput of redis-py's
PubSub in ``bench/bus_micro.py``); commands go through redis-py.

Failure handling: any connection error marks the bus down (health degraded
with the reason, ``on_bus_state`` called, logged, counted): publishes and
queries raise :class:`BusUnavailable`, interest and presence changes are
recorded locally. A reconnect loop retries with exponential backoff and
jitter (every attempt logged); on success it reloads the scripts, checks the
epoch, re-seeds seq counters if Redis lost its data, resubscribes every
channel, re-adds local presence, logs ``bus_recovered`` and calls
``on_bus_state`` again.

Redis restarted without persistence: the epoch key is gone, so the first
node to reconnect sets a new one and every node sees the change. Each node
then raises every room counter it knows (rooms with local interest, from the
last seq it delivered) back to at least that value, so those rooms continue
without going backwards; rooms nobody was subscribed to restart at seq 1.
Publications made while a node was disconnected are not delivered to it
(a ``bus_seq_gap`` warning is logged when the next one arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtserver.bus.base import (
    HANDLER_ERRORS,
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    PresenceMember,
    PresenceSnapshot,
    announce_health,
)
from rtserver.bus.embedded import ReconnectPolicy
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["RedisBus", "RedisBusSettings", "default_node_id"]

_log = get_logger("rtserver.bus.redis")

_M_REQ_FAILED = REGISTRY.counter(
    "rtserver_bus_request_failures_total", "Bus requests that failed", ("bus", "reason"))
_M_RECONNECTS = REGISTRY.counter(
    "rtserver_bus_reconnect_attempts_total", "Bus reconnect attempts", ("bus", "result"))
_M_SEQ_GAPS = REGISTRY.counter(
    "rtserver_bus_seq_gaps_total", "Publications received with a seq that skips values", ("bus",))
_M_HANDLER_ERRORS = HANDLER_ERRORS
_M_EPOCH = REGISTRY.counter(
    "rtserver_bus_redis_epoch_changes_total",
    "Times Redis was found to have lost its data (epoch key changed)")
_M_PUB_BATCHES = REGISTRY.counter(
    "rtserver_bus_redis_publish_batches_total", "Pipelines of publishes sent to Redis")
_M_PUBLISHED = REGISTRY.counter(
    "rtserver_bus_redis_published_total", "Publications sequenced by Redis from this worker")

_CONN_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()

_PUBLISH_LUA = """
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[5] then
  return redis.error_reply('EPOCH redis epoch is ' .. tostring(epoch))
end
local seq = redis.call('INCR', KEYS[1])
local msg = 'P' .. string.format('%d', seq) .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('LPUSH', KEYS[2], msg)
  redis.call('LTRIM', KEYS[2], 0, size - 1)
end
redis.call('PUBLISH', ARGV[1], msg)
return seq
"""

_PRESENCE_ADD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return #ARGV - 1
"""

_PRESENCE_QUERY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[1])
local members = {}
if limit > 0 then
  members = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
end
return {count, members}
"""

_RESEED_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[1])
if cur < known then
  redis.call('SET', KEYS[1], ARGV[1])
  return known
end
return cur
"""


def default_node_id(worker_id: int) -> str:
    """A node id unique per worker process: ``host:pid:worker:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{worker_id}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class RedisBusSettings:
    """Settings of the Redis bus (config ``[bus]``)."""

    #: redis://host:port/db (or rediss://, unix://).
    url: str
    #: Prefix of every key and channel; servers sharing a prefix act as one.
    key_prefix: str
    #: This worker's identity in messages and logs (see :func:`default_node_id`).
    node_id: str
    #: Messages kept per room history list (0 = no history).
    history_size: int
    #: Seconds a presence entry lives without being refreshed.
    presence_ttl: float
    #: Seconds between refreshes of this worker's presence entries (< presence_ttl).
    presence_refresh_interval: float
    #: Seconds one Redis command (or pipeline) may take.
    request_timeout: float
    #: Seconds one connection attempt may take.
    connect_timeout: float
    #: Connections of the command pool (the pub/sub connection is extra).
    max_connections: int
    #: Most publishes sent in one pipeline.
    publish_batch_max: int
    reconnect: ReconnectPolicy

    def __post_init__(self) -> None:
        if not 0 < self.presence_refresh_interval < self.presence_ttl:
            raise ValueError(
                f"presence_refresh_interval {self.presence_refresh_interval} must be > 0 and "
                f"< presence_ttl {self.presence_ttl}. Required action: fix [bus]")
        if self.publish_batch_max < 1 or self.max_connections < 2 or self.history_size < 0:
            raise ValueError(
                "publish_batch_max >= 1, max_connections >= 2 and history_size >= 0 are required. "
                "Required action: fix [bus]")
        if not self.key_prefix:
            raise ValueError("key_prefix must not be empty. Required action: fix [bus]")


def _pack(*args: bytes) -> bytes:
    """A RESP command (array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class _RespError(Exception):
    """An error reply (``-ERR ...``) on the subscriber connection."""


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
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
            parsed = _parse(buf, nxt)
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
        return _RespError(bytes(buf[pos + 1:end]).decode(errors="replace")), end + 2
    raise ValueError(f"unexpected RESP type byte {kind:#x} at {pos}")


class _Subscriber(asyncio.Protocol):
    """The worker's pub/sub connection: a minimal RESP2 reader.

    redis-py's PubSub parses every message through several layers of Python
    (``StreamReader.readline`` per element); this protocol parses the buffer in
    place and hands ``message`` pushes straight to the bus. Commands: SUBSCRIBE,
    UNSUBSCRIBE (confirmations are pushes), AUTH and PING (ordered replies).
    """

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
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
                parsed = _parse(buf, pos)
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
                self.bus._on_message(value[1], value[2])
                return
            if kind == b"subscribe":
                self.bus._confirm_subscription(value[1])
                return
            if kind == b"unsubscribe":
                return
            if kind == b"pong":
                value = b"PONG"
        if self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                if isinstance(value, _RespError):
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
        self.bus._subscriber_lost(self, exc)

    def send(self, *args: bytes) -> None:
        """Write one command (no reply expected: SUBSCRIBE / UNSUBSCRIBE)."""
        if self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("subscriber connection closed")
        self.transport.write(_pack(*args))

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


class _Down(Exception):
    """Internal: the Redis connection failed (carries the reason)."""


class RedisBus(Bus):
    """A worker's bus over Redis."""

    kind = "redis"

    def __init__(self, settings: RedisBusSettings) -> None:
        """Create the bus; nothing connects before :meth:`start`."""
        self.settings = settings
        p = settings.key_prefix
        self._k_epoch = f"{p}:epoch"
        self._k_seq = f"{p}:seq:"
        self._k_hist = f"{p}:hist:"
        self._k_pres = f"{p}:pres:"
        self._ch_room = f"{p}:room:"
        self._ch_user = f"{p}:user:"
        self._ch_room_b = self._ch_room.encode()
        self._ch_user_b = self._ch_user.encode()
        self._ch_node = f"{p}:node:{settings.node_id}"
        self._origin = settings.node_id.encode()
        self._loop: asyncio.AbstractEventLoop
        self._handler: BusHandler | None = None
        self._client: aioredis.Redis | None = None
        self._sub: _Subscriber | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._pub_task: asyncio.Task[None] | None = None
        self._pub_queue: list[tuple[str, bytes, asyncio.Future[int]]] = []
        self._sub_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._up = False
        self._started = False
        self._closing = False
        self._epoch: str | None = None
        self._sha: dict[str, str] = {}
        self._rooms: set[str] = set()
        self._users: set[str] = set()
        self._presence: dict[str, set[bytes]] = {}
        self._last_seen: dict[str, int] = {}
        self._left_during_refresh: list[tuple[str, bytes]] | None = None
        self._health = BusHealth(kind="redis", ok=False, reason="not started")

    # ------------------------------------------------------------------ lifecycle

    async def start(self, handler: BusHandler) -> None:
        """Connect, load the scripts, check the epoch, subscribe; raises BusUnavailable."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        s = self.settings
        pool = aioredis.BlockingConnectionPool.from_url(
            s.url, max_connections=s.max_connections, timeout=s.request_timeout,
            socket_timeout=s.request_timeout, socket_connect_timeout=s.connect_timeout,
            # RESP2: redis-py's pub/sub parsing was faster than with RESP3 in back-to-back
            # runs of bench/bus_micro.py (19.1k vs 15.4k msgs/s); nothing here needs RESP3.
            retry=Retry(NoBackoff(), 0), decode_responses=False, protocol=2)
        self._client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        try:
            await self._connect()
        except (_Down, *_CONN_ERRORS, RedisError) as exc:
            await self._client.aclose()
            self._client = None
            raise BusUnavailable(
                f"redis bus: cannot reach Redis at {_safe_url(s.url)}: {exc}. Required action: "
                "start Redis or fix [bus] redis_url") from exc
        self._started = True
        self._refresher = self._loop.create_task(self._refresh_loop())
        self._set_health(True, None)
        _log.info("bus_connected", bus="redis", url=_safe_url(s.url), node=s.node_id,
                  epoch=self._epoch)

    async def close(self) -> None:
        """Remove this worker's presence entries, unsubscribe and disconnect."""
        self._closing = True
        for task in (self._reconnector, self._refresher, self._pub_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_publishes("redis bus closed")
        if self._up and self._client is not None and self._presence:
            try:
                pipe = self._client.pipeline(transaction=False)
                for room, members in self._presence.items():
                    pipe.zrem(self._k_pres + room, *members)
                await pipe.execute()
            except (*_CONN_ERRORS, RedisError) as exc:
                _log.warning("bus_presence_cleanup_failed", bus="redis", error=_err(exc),
                             note="entries expire after presence_ttl")
        self._up = False
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._health = BusHealth(kind="redis", ok=False, reason="closed")

    async def _connect(self) -> None:
        """(Re)establish everything; raises on failure (the caller logs/retries)."""
        client = self._client
        assert client is not None
        await client.ping()
        for name, text in (("publish", _PUBLISH_LUA), ("presence_add", _PRESENCE_ADD_LUA),
                           ("presence_query", _PRESENCE_QUERY_LUA), ("reseed", _RESEED_LUA)):
            self._sha[name] = str(await client.script_load(text))
        await self._check_epoch(client)
        await self._drop_pubsub()
        await self._open_subscriber()
        await self._subscribe([self._ch_node])
        channels = [self._ch_room + r for r in self._rooms] + [self._ch_user + u
                                                              for u in self._users]
        for i in range(0, len(channels), 1000):
            await self._subscribe(channels[i:i + 1000])
        if self._presence:
            await self._refresh_presence(client)
        self._up = True

    async def _check_epoch(self, client: aioredis.Redis) -> None:
        await client.set(self._k_epoch, uuid.uuid4().hex, nx=True)
        raw = await client.get(self._k_epoch)
        if raw is None:
            raise _Down("epoch key vanished right after SET NX")
        epoch = raw.decode() if isinstance(raw, bytes) else str(raw)
        if self._epoch is not None and epoch != self._epoch:
            _M_EPOCH.inc()
            known = {room: seq for room, seq in self._last_seen.items() if room in self._rooms}
            _log.error(
                "redis_data_lost",
                message=("Redis lost its data (epoch key changed: restarted without persistence "
                         "or flushed). Seq counters were reset; this worker raises the counters "
                         "of its rooms back to the last seq it delivered so they do not go "
                         "backwards. Rooms without interest anywhere restart at seq 1 and their "
                         "history is gone. Required action: enable Redis persistence (AOF) if "
                         "seq continuity matters"),
                old_epoch=self._epoch, new_epoch=epoch, rooms_reseeded=len(known))
            if known:
                pipe = client.pipeline(transaction=False)
                for room, seq in known.items():
                    pipe.evalsha(self._sha["reseed"], 1, self._k_seq + room, seq)
                await pipe.execute()
        self._epoch = epoch

    async def _open_subscriber(self) -> None:
        settings = self.settings
        params: dict[str, Any] = parse_url(settings.url)  # type: ignore[no-untyped-call]
        loop = self._loop
        async with asyncio.timeout(settings.connect_timeout):
            if "path" in params:
                _, sub = await loop.create_unix_connection(lambda: _Subscriber(self),
                                                           params["path"])
            else:
                ssl_context = (ssl.create_default_context()
                               if settings.url.startswith("rediss://") else None)
                _, sub = await loop.create_connection(
                    lambda: _Subscriber(self), params.get("host", "localhost"),
                    params.get("port", 6379), ssl=ssl_context)
        self._sub = sub
        password = params.get("password")
        if password:
            username = params.get("username")
            auth = ([b"AUTH", username.encode(), password.encode()] if username
                    else [b"AUTH", password.encode()])
            await sub.request(settings.request_timeout, *auth)

    async def _drop_pubsub(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        self._fail_sub_waiters()

    def _subscriber_lost(self, sub: _Subscriber, exc: Exception | None) -> None:
        if sub is self._sub:
            self._sub = None
            self._mark_down(f"subscriber connection lost ({exc or 'closed by Redis'})")

    def _confirm_subscription(self, channel: bytes) -> None:
        futs = self._sub_waiters.pop(channel, None)
        if futs:
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    def _fail_sub_waiters(self) -> None:
        waiters, self._sub_waiters = self._sub_waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(BusUnavailable(
                        "redis bus: subscription interrupted by a connection loss. "
                        "Required action: none, it is re-declared on recovery"))

    # ------------------------------------------------------------------ health / down / reconnect

    def health(self) -> BusHealth:
        """Current state (no I/O)."""
        return self._health

    def _set_health(self, ok: bool, reason: str | None) -> None:
        self._health = BusHealth(kind="redis", ok=ok, reason=reason)
        announce_health(self._handler, self._health)

    def _mark_down(self, reason: str) -> None:
        if self._closing or not self._started:
            return
        if self._up:
            self._up = False
            _log.error("bus_disconnected", bus="redis", reason=reason,
                       action="reconnecting with backoff; publishes fail until recovery")
            self._set_health(False, f"redis unavailable: {reason}")
            self._fail_publishes(f"redis bus down ({reason})")
            self._fail_sub_waiters()
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        policy = self.settings.reconnect
        attempt = 0
        await self._drop_pubsub()
        if self._client is not None:
            # Every pooled connection is suspect after a failure: start afresh.
            await self._client.connection_pool.disconnect(inuse_connections=True)
        while not self._closing:
            attempt += 1
            delay = policy.delay(attempt)
            _log.warning("bus_reconnect_attempt", bus="redis", attempt=attempt,
                         delay=round(delay, 3), url=_safe_url(self.settings.url))
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except (_Down, *_CONN_ERRORS, RedisError) as exc:
                _M_RECONNECTS.inc("redis", "failed")
                _log.warning("bus_reconnect_failed", bus="redis", attempt=attempt,
                             error=_err(exc))
                await self._drop_pubsub()
                continue
            _M_RECONNECTS.inc("redis", "ok")
            _log.info("bus_recovered", bus="redis", attempts=attempt, rooms=len(self._rooms),
                      users=len(self._users), epoch=self._epoch)
            self._set_health(True, None)
            return

    def _unavailable(self, what: str) -> BusUnavailable:
        _M_REQ_FAILED.inc("redis", "down")
        return BusUnavailable(
            f"redis bus: Redis unavailable ({self._health.reason}); {what} not carried out. "
            "Required action: retry after the bus recovers")

    async def _command(self, what: str, coro: Any) -> Any:
        """Await one Redis command; a connection failure marks the bus down."""
        try:
            return await coro
        except _CONN_ERRORS as exc:
            _M_REQ_FAILED.inc("redis", "connection")
            self._mark_down(f"{what}: {_err(exc)}")
            raise BusUnavailable(
                f"redis bus: {what} failed: {_err(exc)}. Required action: retry after the bus "
                "recovers") from exc

    # ------------------------------------------------------------------ pub/sub

    def _on_message(self, channel: bytes, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            kind = data[0]
            if kind == 0x50:  # P: publication
                nl1 = data.index(b"\n", 1)
                seq = int(data[1:nl1])
                nl2 = data.index(b"\n", nl1 + 1)
                room = channel[len(self._ch_room_b):].decode()
                last = self._last_seen.get(room)
                if last is not None and seq != last + 1:
                    _M_SEQ_GAPS.inc("redis")
                    _log.warning("bus_seq_gap", bus="redis", room=room, expected=last + 1,
                                 got=seq)
                self._last_seen[room] = seq
                handler.on_publication(room, seq, data[nl2 + 1:])
            elif kind == 0x45:  # E: room event
                nl = data.index(b"\n", 1)
                handler.on_room_event(channel[len(self._ch_room_b):].decode(), data[nl + 1:])
            elif kind == 0x55:  # U: user message
                nl = data.index(b"\n", 1)
                handler.on_user_message(channel[len(self._ch_user_b):].decode(), data[nl + 1:])
            else:
                _log.error("bus_unknown_message", bus="redis", channel=channel, kind=kind)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the stream
            _M_HANDLER_ERRORS.inc("redis")
            _log.error("bus_handler_failed", bus="redis", channel=channel, error=_err(exc))

    async def _subscribe(self, channels: list[str]) -> None:
        sub = self._sub
        if sub is None:
            raise RedisConnectionError("no subscriber connection")
        if not channels:
            return
        futs = []
        encoded = [ch.encode() for ch in channels]
        for ch in encoded:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._sub_waiters.setdefault(ch, []).append(fut)
            futs.append(fut)
        sub.send(b"SUBSCRIBE", *encoded)
        async with asyncio.timeout(self.settings.request_timeout):
            await asyncio.gather(*futs)

    async def _unsubscribe(self, channel: str) -> None:
        sub = self._sub
        if sub is None:
            raise RedisConnectionError("no subscriber connection")
        sub.send(b"UNSUBSCRIBE", channel.encode())

    async def _declare(self, what: str, op: Any) -> None:
        """Run an interest/presence change now if up; when down it is replayed on recovery."""
        if not self._up:
            _log.info("bus_declaration_deferred", bus="redis", what=what,
                      reason=self._health.reason)
            return
        try:
            await op()
        except (BusUnavailable, *_CONN_ERRORS, RedisError) as exc:
            if isinstance(exc, _CONN_ERRORS):
                self._mark_down(f"{what}: {_err(exc)}")
            if self._up:
                raise BusUnavailable(
                    f"redis bus: {what} failed: {_err(exc)}. Required action: retry") from exc
            _log.info("bus_declaration_deferred", bus="redis", what=what,
                      reason=self._health.reason)

    async def add_interest(self, room: str) -> None:
        """Subscribe ``room``'s channel (returns once Redis confirmed it)."""
        self._rooms.add(room)
        await self._declare("add_interest", lambda: self._subscribe([self._ch_room + room]))

    async def remove_interest(self, room: str) -> None:
        """Unsubscribe ``room``'s channel."""
        self._rooms.discard(room)
        self._last_seen.pop(room, None)
        await self._declare("remove_interest", lambda: self._unsubscribe(self._ch_room + room))

    async def add_user_interest(self, user: str) -> None:
        """Subscribe ``user``'s channel."""
        self._users.add(user)
        await self._declare("add_user_interest", lambda: self._subscribe([self._ch_user + user]))

    async def remove_user_interest(self, user: str) -> None:
        """Unsubscribe ``user``'s channel."""
        self._users.discard(user)
        await self._declare("remove_user_interest",
                            lambda: self._unsubscribe(self._ch_user + user))

    # ------------------------------------------------------------------ publish

    async def publish(self, room: str, body: bytes) -> int:
        """Sequence + store + publish in one script call (batched per tick); returns the seq."""
        if not self._up:
            raise self._unavailable("publish")
        fut: asyncio.Future[int] = self._loop.create_future()
        self._pub_queue.append((room, body, fut))
        if self._pub_task is None or self._pub_task.done():
            self._pub_task = self._loop.create_task(self._pub_flusher())
        return await fut

    def _fail_publishes(self, reason: str) -> None:
        queue, self._pub_queue = self._pub_queue, []
        for _, _, fut in queue:
            if not fut.done():
                _M_REQ_FAILED.inc("redis", "down")
                fut.set_exception(BusUnavailable(
                    f"{reason}; publish not carried out. Required action: retry after the bus "
                    "recovers"))

    async def _pub_flusher(self) -> None:
        limit = self.settings.publish_batch_max
        while self._pub_queue:
            batch = self._pub_queue[:limit]
            del self._pub_queue[:limit]
            try:
                results = await self._run_publish_batch(batch)
            except (*_CONN_ERRORS, RedisError) as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BusUnavailable(
                            f"redis bus: publish failed: {_err(exc)}. Required action: retry after "
                            "the bus recovers"))
                _M_REQ_FAILED.inc("redis", "connection", amount=len(batch))
                if isinstance(exc, _CONN_ERRORS):
                    self._mark_down(f"publish: {_err(exc)}")
                self._fail_publishes(f"redis bus down ({_err(exc)})")
                return
            epoch_lost = False
            for (_, _, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    if str(res).startswith("EPOCH"):
                        epoch_lost = True
                    _M_REQ_FAILED.inc("redis", "script")
                    fut.set_exception(BusUnavailable(
                        f"redis bus: publish refused: {res}. Required action: retry after the "
                        "bus recovers"))
                else:
                    _M_PUBLISHED.inc()
                    fut.set_result(int(res))
            if epoch_lost:
                self._mark_down("Redis lost its data (epoch changed); re-seeding on reconnect")
                self._fail_publishes("redis bus: Redis lost its data")
                return

    async def _run_publish_batch(self,
                                 batch: list[tuple[str, bytes, asyncio.Future[int]]]) -> list[Any]:
        client = self._client
        assert client is not None
        s = self.settings
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            sha = self._sha["publish"]
            for room, body, _ in batch:
                pipe.evalsha(sha, 3, self._k_seq + room, self._k_hist + room, self._k_epoch,
                             self._ch_room + room, self._origin, body, s.history_size,
                             self._epoch or "")
            _M_PUB_BATCHES.inc()
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and results and all(isinstance(r, NoScriptError) for r in results):
                # The script cache was flushed (SCRIPT FLUSH): nothing ran; load and redo once.
                _log.warning("bus_script_reload", bus="redis")
                self._sha["publish"] = str(await client.script_load(_PUBLISH_LUA))
                continue
            return results
        raise ResponseError("publish script missing after reload")

    async def last_seq(self, room: str) -> int:
        """The room's current seq counter in Redis."""
        if not self._up or self._client is None:
            raise self._unavailable("last_seq")
        raw = await self._command("last_seq", self._client.get(self._k_seq + room))
        return int(raw) if raw is not None else 0

    async def history(self, room: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` most recent ``(seq, body)`` of ``room``, oldest first (extension)."""
        if not self._up or self._client is None:
            raise self._unavailable("history")
        raw = await self._command("history",
                                  self._client.lrange(self._k_hist + room, 0, limit - 1))
        out = []
        for data in reversed(raw):
            nl1 = data.index(b"\n", 1)
            nl2 = data.index(b"\n", nl1 + 1)
            out.append((int(data[1:nl1]), bytes(data[nl2 + 1:])))
        return out

    async def emit_room_event(self, room: str, payload: bytes) -> None:
        """PUBLISH a room event to the room channel."""
        if not self._up or self._client is None:
            raise self._unavailable("emit_room_event")
        await self._command("emit_room_event", self._client.publish(
            self._ch_room + room, b"E" + self._origin + b"\n" + payload))

    async def send_to_user(self, user: str, payload: bytes) -> None:
        """PUBLISH to the user's channel (every node with a connection of ``user``)."""
        if not self._up or self._client is None:
            raise self._unavailable("send_to_user")
        await self._command("send_to_user", self._client.publish(
            self._ch_user + user, b"U" + self._origin + b"\n" + payload))

    # ------------------------------------------------------------------ presence

    async def presence_join(self, room: str, member: PresenceMember) -> None:
        """Add ``member`` with expiry now + presence_ttl (refreshed by this worker)."""
        encoded = _enc.encode((member.user, member.connection_id))
        self._presence.setdefault(room, set()).add(encoded)
        client = self._client
        if client is None:
            return
        ttl_ms = int(self.settings.presence_ttl * 1000)
        await self._declare("presence_join", lambda: client.evalsha(
            self._sha["presence_add"], 1, self._k_pres + room, ttl_ms, encoded))

    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``'s presence."""
        encoded = _enc.encode((member.user, member.connection_id))
        members = self._presence.get(room)
        if members is not None:
            members.discard(encoded)
            if not members:
                del self._presence[room]
        if self._left_during_refresh is not None:
            self._left_during_refresh.append((room, encoded))
        client = self._client
        if client is None:
            return
        await self._declare("presence_leave",
                            lambda: client.zrem(self._k_pres + room, encoded))

    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Count and up to ``limit`` members over every node (expired entries dropped)."""
        if not self._up or self._client is None:
            raise self._unavailable("presence")
        count, raw = await self._command("presence", self._client.evalsha(
            self._sha["presence_query"], 1, self._k_pres + room, limit))
        members = []
        for item in raw:
            user, cid = _dec.decode(item)
            members.append(PresenceMember(user=user, connection_id=cid))
        return PresenceSnapshot(count=int(count), members=members)

    async def _refresh_presence(self, client: aioredis.Redis) -> None:
        ttl_ms = int(self.settings.presence_ttl * 1000)
        pipe = client.pipeline(transaction=False)
        for room, members in self._presence.items():
            listed = list(members)
            for i in range(0, len(listed), 1000):
                pipe.evalsha(self._sha["presence_add"], 1, self._k_pres + room, ttl_ms,
                             *listed[i:i + 1000])
        # A member leaving while this pipeline is in flight could be re-added by it
        # after its ZREM: remember such leaves and remove them again afterwards.
        left: list[tuple[str, bytes]] = []
        self._left_during_refresh = left
        try:
            await pipe.execute()
        finally:
            self._left_during_refresh = None
        if left:
            cleanup = client.pipeline(transaction=False)
            for room, encoded in left:
                cleanup.zrem(self._k_pres + room, encoded)
            await cleanup.execute()

    async def _refresh_loop(self) -> None:
        interval = self.settings.presence_refresh_interval
        while True:
            await asyncio.sleep(interval)
            client = self._client
            if not self._up or client is None:
                continue
            try:
                # Also a liveness probe of both connections: an idle bus notices a dead
                # or hung Redis here.
                await client.ping()
                sub = self._sub
                if sub is not None:
                    await sub.request(self.settings.request_timeout, b"PING")
                if self._presence:
                    await self._refresh_presence(client)
            except (*_CONN_ERRORS, RedisError) as exc:
                _log.warning("bus_presence_refresh_failed", bus="redis", error=_err(exc))
                if isinstance(exc, _CONN_ERRORS):
                    self._mark_down(f"presence refresh: {_err(exc)}")


def _err(exc: BaseException) -> str:
    """``Type: message`` of an exception (redis-py's repr hides the message)."""
    return f"{type(exc).__name__}: {exc}"


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
