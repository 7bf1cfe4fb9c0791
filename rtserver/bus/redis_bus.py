"""Redis bus: rooms, users and presence across machines (redis-py asyncio).

Keys and channels (``P`` = ``key_prefix``)::

    P:epoch          string   random id set once per Redis dataset (data-loss detection)
    P:seq:<room>     integer  the room's last seq (INCR)
    P:hist:<room>    list     the last ``history_size`` messages, newest first
    P:pres:<room>    zset     presence (:mod:`rtserver.bus.redis_presence`)
    P:room:<room>    channel  room publications and room events
    P:user:<user>    channel  user messages
    P:node:<node>    channel  this worker's own channel (keeps the subscriber subscribed)
    P:admin, P:workers        admin queries and answers (:mod:`rtserver.bus.redis_admin`)

Publishing is one Lua script (:mod:`rtserver.bus.redis_scripts`): check the
epoch, ``INCR`` the room seq, store the history and ``PUBLISH`` — one atomic
step, so every subscriber receives a room's messages in seq order. Publishes
of one loop tick go out in one pipeline (at most ``publish_batch_max``).
Channel messages: ``b"P" + seq + b"\\n" + origin + b"\\n" + body``,
``b"E" + origin + b"\\n" + payload`` (room event), ``b"U" + origin + b"\\n" +
payload`` (user message). Every worker, the publisher included, receives its
publications through its subscription (:class:`~rtserver.bus.redis_pubsub.Subscriber`).

Failure handling: a connection error marks the bus down (health degraded,
``on_bus_state``, logged, counted); publishes and queries raise :class:`BusUnavailable`;
interest and presence changes are logged as deferred (the node has them in its Hub).
The reconnect loop (backoff with jitter, every attempt logged) reloads the scripts,
re-declares exactly the handler's :meth:`~rtserver.bus.base.BusHandler.interest_snapshot`,
checks the epoch, logs ``bus_recovered`` and calls ``on_bus_state``. The bus keeps no
copy of the worker's rooms, users or presence.

Redis restarted without persistence: the epoch key is gone, the first node to
reconnect sets a new one and every node sees the change (``redis_data_lost``);
each raises the counters of its rooms to the last seq it delivered (from the
snapshot's ``positions``) so they do not go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from rtserver.bus.base import (
    HANDLER_ERRORS,
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    InterestSnapshot,
    PresenceMember,
    PresenceSnapshot,
    Recovery,
    StreamPosition,
    announce_health,
)
from rtserver.bus.bus_metrics import RECONNECTS, REQUEST_FAILURES
from rtserver.bus.redis_admin import RedisAdminQueries
from rtserver.bus.redis_presence import RedisPresence
from rtserver.bus.redis_publish import CONN_ERRORS, RedisPublisher, err_text
from rtserver.bus.redis_pubsub import Subscriber, open_subscriber
from rtserver.bus.redis_scripts import SCRIPTS
from rtserver.bus.redis_settings import RedisBusSettings, safe_url
from rtserver.bus.redis_streams import (
    accepted_on,
    parse_history_entry,
    parse_publication,
    recovery_from_reply,
)
from rtserver.bus.stream_recovery import GapFiller
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["RedisBus"]

_log = get_logger("rtserver.bus.redis")

_M_EPOCH = REGISTRY.counter(
    "rtserver_bus_redis_epoch_changes_total",
    "Times Redis was found to have lost its data (epoch key changed)")
_CONN_ERRORS = CONN_ERRORS
_err = err_text


class _Down(Exception):
    """Internal: the Redis connection failed (carries the reason)."""


class RedisBus(RedisAdminQueries, Bus):
    """A worker's bus over Redis."""

    kind = "redis"

    def __init__(self, settings: RedisBusSettings) -> None:
        """Create the bus; nothing connects before :meth:`start`."""
        self.settings = settings
        p = settings.key_prefix
        self._k_epoch = f"{p}:epoch"
        self._k_seq = f"{p}:seq:"
        self._k_hist = f"{p}:hist:"
        self._k_ep = f"{p}:ep:"
        self._k_hbytes = f"{p}:hbytes:"
        self._ch_room = f"{p}:room:"
        self._ch_user = f"{p}:user:"
        self._ch_room_b = self._ch_room.encode()
        self._ch_user_b = self._ch_user.encode()
        self._ch_node = f"{p}:node:{settings.node_id}"
        self._origin = settings.node_id.encode()
        self._clock = settings.clock_id.encode()
        self._loop: asyncio.AbstractEventLoop
        self._handler: BusHandler | None = None
        self._client: aioredis.Redis | None = None
        self._sub: Subscriber | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._publisher = RedisPublisher(settings, self._mark_down)
        self._gaps = GapFiller("redis")
        self._sub_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._up = False
        self._started = False
        self._closing = False
        self._epoch: str | None = None
        self._sha: dict[str, str] = {}
        # True from the moment a (re)connect took the handler's interest snapshot:
        # declarations made after it go out directly, behind the snapshot's.
        self._declaring = False
        # (rooms, users, presence) re-declared by the last (re)connect, for its log line.
        self._declared = (0, 0, 0)
        self._presence = RedisPresence(p, settings.presence_ttl, self._sha)
        self._health = BusHealth(kind="redis", ok=False, reason="not started")
        self._admin_init()

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
            # runs of rtserver/bench/bus_micro.py (19.1k vs 15.4k msgs/s); nothing here needs RESP3.
            retry=Retry(NoBackoff(), 0), decode_responses=False, protocol=2)
        self._client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        try:
            await self._connect()
        except (_Down, *_CONN_ERRORS, RedisError) as exc:
            await self._client.aclose()
            self._client = None
            raise BusUnavailable(
                f"redis bus: cannot reach Redis at {safe_url(s.url)}: {exc}. Required action: "
                "start Redis or fix [bus] redis_url") from exc
        self._started = True
        self._refresher = self._loop.create_task(self._refresh_loop())
        self._set_health(True, None)
        _log.info("bus_connected", bus="redis", url=safe_url(s.url), node=s.node_id,
                  epoch=self._epoch)

    async def close(self) -> None:
        """Remove this worker's presence entries, unsubscribe and disconnect."""
        self._closing = True
        for task in (self._reconnector, self._refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._publisher.close()
        if self._up and self._client is not None:
            try:
                await self._presence.remove_all(self._client, self._snapshot().presence)
                await self._admin_unregister(self._client)
            except (*_CONN_ERRORS, RedisError) as exc:
                _log.warning("bus_presence_cleanup_failed", bus="redis", error=_err(exc),
                             note="entries expire after presence_ttl")
        self._up = False
        self._declaring = False
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._health = BusHealth(kind="redis", ok=False, reason="closed")

    async def _connect(self) -> None:
        """(Re)establish everything; raises on failure (the caller logs/retries)."""
        client = self._client
        assert client is not None
        self._declaring = False
        await client.ping()
        for name, text in SCRIPTS.items():
            self._sha[name] = str(await client.script_load(text))
        await self._drop_pubsub()
        await self._open_subscriber()
        await self._subscribe([self._ch_node, self._ch_admin])
        snap = self._snapshot()
        # The snapshot's SUBSCRIBEs are written in the same step as the snapshot is
        # taken; interest changes made from now on go out behind them, in order.
        self._declaring = True
        channels = [self._ch_room + r for r in snap.rooms] + [self._ch_user + u
                                                              for u in snap.users]
        rooms = set(snap.rooms)
        since = [(r, p) for r, p in snap.positions.items() if r in rooms]
        # Live publications of the rooms to recover are held back from now on.
        self._gaps.begin([r for r, _ in since])
        confirmed = self._send_subscribe(channels)
        await self._check_epoch(client, snap)
        await self._await_subscribed(confirmed)
        await self._presence.refresh(client, snap.presence)
        await self._admin_register(client)
        offset_ms = await self._clock_offset(client)
        self._publisher.attach(client, self._sha, self._epoch or "", offset_ms)
        if since:
            self._gaps.finish(self._handler, since, await self._recover(client, since))
        self._declared = (len(snap.rooms), len(snap.users), len(snap.presence))
        self._up = True
        self._publisher.resume()

    async def _clock_offset(self, client: aioredis.Redis) -> float:
        """Redis ms minus local monotonic ms (measured after the answer: publish
        deadlines converted with it fall slightly early on the Redis clock)."""
        t0 = time.monotonic()
        secs, micros = await client.time()
        t1 = time.monotonic()
        if t1 - t0 > self.settings.request_timeout / 2:
            raise _Down("Redis TIME took longer than half of request_timeout")
        return float(secs * 1000 + micros // 1000 - t1 * 1000)

    def _snapshot(self) -> InterestSnapshot:
        handler = self._handler
        if handler is None:
            return InterestSnapshot(rooms=[], users=[], presence=[])
        return handler.interest_snapshot()

    async def _check_epoch(self, client: aioredis.Redis, snap: InterestSnapshot) -> None:
        await client.set(self._k_epoch, uuid.uuid4().hex, nx=True)
        raw = await client.get(self._k_epoch)
        if raw is None:
            raise _Down("epoch key vanished right after SET NX")
        epoch = raw.decode() if isinstance(raw, bytes) else str(raw)
        if self._epoch is not None and epoch != self._epoch:
            _M_EPOCH.inc()
            rooms = set(snap.rooms)
            known = {room: pos.seq for room, pos in snap.positions.items() if room in rooms}
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
                    # Skipped for a room whose new epoch another node already started.
                    pipe.evalsha(self._sha["reseed"], 2, self._k_seq + room,
                                 self._k_ep + room, seq)
                await pipe.execute()
        self._epoch = epoch

    async def _open_subscriber(self) -> None:
        s = self.settings
        self._sub = await open_subscriber(s.url, self, s.connect_timeout, s.request_timeout)

    async def _drop_pubsub(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        self._fail_sub_waiters()

    def on_subscriber_lost(self, sub: Subscriber, exc: Exception | None) -> None:
        """The pub/sub connection closed: the bus is down (reconnects)."""
        if sub is self._sub:
            self._sub = None
            self._mark_down(f"subscriber connection lost ({exc or 'closed by Redis'})")

    def on_subscribed(self, channel: bytes) -> None:
        """Redis confirmed a SUBSCRIBE: wake its waiters."""
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
        self._declaring = False
        if self._up:
            self._up = False
            _log.error("bus_disconnected", bus="redis", reason=reason,
                       action="reconnecting with backoff; publishes fail until recovery")
            self._set_health(False, f"redis unavailable: {reason}")
            self._gaps.abort()
            self._publisher.hold()
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
                         delay=round(delay, 3), url=safe_url(self.settings.url))
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except (_Down, *_CONN_ERRORS, RedisError) as exc:
                self._declaring = False
                self._gaps.abort()
                RECONNECTS.inc("redis", "failed")
                _log.warning("bus_reconnect_failed", bus="redis", attempt=attempt,
                             error=_err(exc))
                await self._drop_pubsub()
                continue
            RECONNECTS.inc("redis", "ok")
            rooms, users, presence = self._declared
            _log.info("bus_recovered", bus="redis", attempts=attempt, rooms=rooms, users=users,
                      presence=presence, epoch=self._epoch)
            self._set_health(True, None)
            return

    def _unavailable(self, what: str) -> BusUnavailable:
        REQUEST_FAILURES.inc("redis", "down")
        return BusUnavailable(
            f"redis bus: Redis unavailable ({self._health.reason}); {what} not carried out. "
            "Required action: retry after the bus recovers")

    async def _command(self, what: str, coro: Any) -> Any:
        """Await one Redis command; a connection failure marks the bus down."""
        try:
            return await coro
        except _CONN_ERRORS as exc:
            REQUEST_FAILURES.inc("redis", "connection")
            self._mark_down(f"{what}: {_err(exc)}")
            raise BusUnavailable(
                f"redis bus: {what} failed: {_err(exc)}. Required action: retry after the bus "
                "recovers") from exc

    # ------------------------------------------------------------------ pub/sub

    def on_message(self, channel: bytes, data: bytes) -> None:
        """One pub/sub message: a publication, room event or user message for the handler."""
        handler = self._handler
        if handler is None:
            return
        try:
            kind = data[0]
            if kind == 0x50:  # P: publication
                seq, epoch, body = parse_publication(data)
                room = channel[len(self._ch_room_b):].decode()
                held = self._gaps.rooms
                if held and room in held:
                    held[room].append((epoch, seq, body))  # delivered later: not timed
                else:
                    self.accepted_at = accepted_on(data, self._clock)
                    try:
                        handler.on_publication(room, epoch, seq, body)
                    finally:
                        self.accepted_at = 0.0
            elif kind == 0x45:  # E: room event
                nl = data.index(b"\n", 1)
                handler.on_room_event(channel[len(self._ch_room_b):].decode(), data[nl + 1:])
            elif kind == 0x55:  # U: user message
                nl = data.index(b"\n", 1)
                handler.on_user_message(channel[len(self._ch_user_b):].decode(), data[nl + 1:])
            elif kind == 0x51 or kind == 0x41:  # Q / A: admin query, answer
                self.on_admin_message(kind, data)
            else:
                _log.error("bus_unknown_message", bus="redis", channel=channel, kind=kind)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the stream
            HANDLER_ERRORS.inc("redis")
            _log.error("bus_handler_failed", bus="redis", channel=channel, error=_err(exc))

    def _send_subscribe(self, channels: list[str]) -> list[asyncio.Future[None]]:
        """Write SUBSCRIBE for ``channels`` now (1000 per command); the confirmations."""
        sub = self._sub
        if sub is None:
            raise RedisConnectionError("no subscriber connection")
        futs = []
        encoded = [ch.encode() for ch in channels]
        for ch in encoded:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._sub_waiters.setdefault(ch, []).append(fut)
            futs.append(fut)
        for i in range(0, len(encoded), 1000):
            sub.send(b"SUBSCRIBE", *encoded[i:i + 1000])
        return futs

    async def _await_subscribed(self, futs: list[asyncio.Future[None]]) -> None:
        if futs:
            async with asyncio.timeout(self.settings.request_timeout):
                await asyncio.gather(*futs)

    async def _subscribe(self, channels: list[str]) -> None:
        await self._await_subscribed(self._send_subscribe(channels))

    async def _unsubscribe(self, channel: str) -> None:
        sub = self._sub
        if sub is None:
            raise RedisConnectionError("no subscriber connection")
        sub.send(b"UNSUBSCRIBE", channel.encode())

    async def _declare(self, what: str, op: Any) -> None:
        """Run an interest/presence change now if up; when down the reconnect re-declares
        the handler's snapshot, which includes it (the node changed its Hub first)."""
        if not (self._up or self._declaring):
            _log.info("bus_declaration_deferred", bus="redis", what=what,
                      reason=self._health.reason)
            return
        try:
            await op()
        except (BusUnavailable, *_CONN_ERRORS, RedisError) as exc:
            if isinstance(exc, _CONN_ERRORS):
                self._mark_down(f"{what}: {_err(exc)}")
            if self._up or self._declaring:
                raise BusUnavailable(
                    f"redis bus: {what} failed: {_err(exc)}. Required action: retry") from exc
            _log.info("bus_declaration_deferred", bus="redis", what=what,
                      reason=self._health.reason)

    async def add_interest(self, room: str) -> None:
        """Subscribe ``room``'s channel, once Redis confirmed it (no position: see Bus)."""
        await self._declare("add_interest", lambda: self._subscribe([self._ch_room + room]))

    async def remove_interest(self, room: str) -> None:
        """Unsubscribe ``room``'s channel."""
        await self._declare("remove_interest", lambda: self._unsubscribe(self._ch_room + room))

    async def add_user_interest(self, user: str) -> None:
        """Subscribe ``user``'s channel."""
        await self._declare("add_user_interest", lambda: self._subscribe([self._ch_user + user]))

    async def remove_user_interest(self, user: str) -> None:
        """Unsubscribe ``user``'s channel."""
        await self._declare("remove_user_interest",
                            lambda: self._unsubscribe(self._ch_user + user))

    # ------------------------------------------------------------------ publish

    async def publish(self, room: str, body: bytes, key: str | None = None) -> StreamPosition:
        """Sequence + store + publish in one script call (batched per tick).

        Idempotent by ``key``; interrupted by a connection loss it is sent again
        after the reconnect, until ``request_timeout`` (:mod:`rtserver.bus.redis_publish`).
        """
        if not self._up:
            raise self._unavailable("publish")
        position: StreamPosition = await self._publisher.submit(room, body, key)
        return position

    async def position(self, room: str) -> StreamPosition:
        """The room's current position in Redis (a new epoch at seq 0 when it has none)."""
        if not self._up or self._client is None:
            raise self._unavailable("position")
        recs: list[Recovery] = await self._command("position", self._recover(
            self._client, [(room, StreamPosition(epoch="", seq=0))]))
        return recs[0].position

    async def recover(self, room: str, since: StreamPosition) -> Recovery:
        """What ``room`` published after ``since`` (from the bounded history)."""
        return (await self.recover_many([(room, since)]))[0]

    async def recover_many(self, since: list[tuple[str, StreamPosition]]) -> list[Recovery]:
        """:meth:`recover` for many rooms in one pipeline."""
        if not self._up or self._client is None:
            raise self._unavailable("recover")
        recs: list[Recovery] = await self._command("recover", self._recover(self._client, since))
        return recs

    async def _recover(self, client: aioredis.Redis,
                       since: list[tuple[str, StreamPosition]]) -> list[Recovery]:
        pipe = client.pipeline(transaction=False)
        ttl_ms = int(self.settings.history_ttl * 1000)
        new_epoch = uuid.uuid4().hex[:12]
        for room, pos in since:
            pipe.evalsha(self._sha["recover"], 3, self._k_seq + room, self._k_ep + room,
                         self._k_hist + room, pos.epoch, pos.seq, new_epoch, ttl_ms)
        return [recovery_from_reply(pos, reply)
                for (_, pos), reply in zip(since, await pipe.execute(), strict=True)]

    async def history(self, room: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` most recent ``(seq, body)`` of ``room``, oldest first (extension)."""
        if not self._up or self._client is None:
            raise self._unavailable("history")
        raw = await self._command("history",
                                  self._client.lrange(self._k_hist + room, 0, limit - 1))
        return [parse_history_entry(entry)[:2] for entry in reversed(raw)]

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
        client = self._client
        if client is None:
            return
        await self._declare("presence_join", lambda: self._presence.join(client, room, member))

    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``'s presence."""
        self._presence.note_leave(room, member)
        client = self._client
        if client is None:
            return
        await self._declare("presence_leave", lambda: self._presence.leave(client, room, member))

    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Count and up to ``limit`` members over every node (expired entries dropped)."""
        if not self._up or self._client is None:
            raise self._unavailable("presence")
        snap: PresenceSnapshot = await self._command(
            "presence", self._presence.query(self._client, room, limit))
        return snap

    async def _touch_rooms(self, client: aioredis.Redis, rooms: list[str]) -> None:
        """Renew the TTL of the streams of rooms this worker watches (they never expire
        while watched; an unwatched idle room expires after history_ttl)."""
        ttl_ms = int(self.settings.history_ttl * 1000)
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(rooms), 250):
            keys = [k + room for room in rooms[i:i + 250]
                    for k in (self._k_seq, self._k_ep, self._k_hist, self._k_hbytes)]
            pipe.evalsha(self._sha["touch_rooms"], len(keys), *keys, ttl_ms)
        await pipe.execute()

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
                # Re-measured so that clock drift never moves publish deadlines.
                self._publisher.set_offset(await self._clock_offset(client))
                sub = self._sub
                if sub is not None:
                    await sub.request(self.settings.request_timeout, b"PING")
                snap = self._snapshot()
                await self._presence.refresh(client, snap.presence)
                await self._touch_rooms(client, snap.rooms)
                await self._admin_register(client)
            except (_Down, *_CONN_ERRORS, RedisError) as exc:
                # _Down here: Redis answered TIME too slowly; the offset is kept as it was.
                _log.warning("bus_presence_refresh_failed", bus="redis", error=_err(exc))
                if isinstance(exc, _CONN_ERRORS):
                    self._mark_down(f"presence refresh: {_err(exc)}")

