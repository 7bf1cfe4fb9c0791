"""Publishes of the Redis bus: batched per loop tick, idempotent, retried after a loss.

Publishes issued in one loop tick go out in one pipeline (at most
``publish_batch_max``) of the publish script (:data:`~rtserver.bus.redis_scripts.PUBLISH_LUA`),
in call order. Every publish carries a key (the caller's, or one generated
here) and a deadline (``request_timeout`` after the call, converted to the
Redis clock): Redis answers a key it saw within ``idempotency_window`` with
the original position and refuses a publish that arrives after its deadline.

A connection loss holds the publishes in flight and queued: they go again,
with their keys, once the bus is back (:meth:`RedisPublisher.resume`), so one
Redis had already sequenced is answered with its original position. One
still held at its deadline fails with :class:`~rtserver.bus.base.BusUnavailable`;
Redis would refuse it from then on, so it is not applied later.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtserver.bus.base import BusUnavailable, StreamPosition
from rtserver.bus.bus_metrics import REQUEST_FAILURES
from rtserver.bus.redis_scripts import PUBLISH_LUA
from rtserver.bus.redis_settings import RedisBusSettings
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["CONN_ERRORS", "RedisPublisher", "err_text"]

_log = get_logger("rtserver.bus.redis")

CONN_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

_M_PUB_BATCHES = REGISTRY.counter(
    "rtserver_bus_redis_publish_batches_total", "Pipelines of publishes sent to Redis")
_M_PUBLISHED = REGISTRY.counter(
    "rtserver_bus_redis_published_total", "Publications sequenced by Redis from this worker")
_M_EVICTED = REGISTRY.counter(
    "rtserver_bus_history_evicted_total",
    "History messages evicted before history_size because a room exceeded history_max_bytes",
    ("bus",))
_M_DUPLICATES = REGISTRY.counter(
    "rtserver_bus_publish_duplicates_total",
    "Publishes answered with the original position of their key (not applied again)", ("bus",))


def err_text(exc: BaseException) -> str:
    """``Type: message`` of an exception (redis-py's repr hides the message)."""
    return f"{type(exc).__name__}: {exc}"


class _Publish:
    __slots__ = ("accepted", "body", "deadline", "fut", "generated", "key", "room", "timer")

    def __init__(self, room: str, body: bytes, key: str, generated: bool, accepted: float,
                 deadline: float, fut: asyncio.Future[StreamPosition]) -> None:
        self.room = room
        self.accepted = accepted
        self.body = body
        self.key = key
        self.generated = generated
        self.deadline = deadline
        self.fut = fut
        self.timer: asyncio.TimerHandle | None = None


class RedisPublisher:
    """The publish pipeline of one :class:`~rtserver.bus.redis_bus.RedisBus`."""

    def __init__(self, settings: RedisBusSettings, mark_down: Callable[[str], None]) -> None:
        """``mark_down(reason)`` reports a connection failure to the bus."""
        self.settings = settings
        p = settings.key_prefix
        self._k_seq, self._k_hist, self._k_ep = f"{p}:seq:", f"{p}:hist:", f"{p}:ep:"
        self._k_hbytes, self._k_idem = f"{p}:hbytes:", f"{p}:idem:"
        self._k_dataset = f"{p}:epoch"
        self._ch_room = f"{p}:room:"
        self._origin = f"{settings.node_id} {settings.clock_id} ".encode()
        self._mark_down = mark_down
        self._queue: list[_Publish] = []
        self._held: list[_Publish] = []
        self._task: asyncio.Task[None] | None = None
        # True while the bus is down: nothing is sent until resume().
        self._paused = False
        self._client: aioredis.Redis | None = None
        self._sha: dict[str, str] = {}
        self._dataset = ""
        self._offset_ms = 0.0
        self._key_prefix = f"\x01{uuid.uuid4().hex[:12]}:"
        self._keys = 0
        self._evictions_logged_at = float("-inf")

    def attach(self, client: aioredis.Redis, sha: dict[str, str], dataset_epoch: str,
               offset_ms: float) -> None:
        """After a (re)connect: the client, scripts, dataset epoch and the Redis clock
        offset (Redis ms = local monotonic ms + ``offset_ms``, rounded down)."""
        self._client = client
        self._sha = sha
        self._dataset = dataset_epoch
        self._offset_ms = offset_ms

    def set_offset(self, offset_ms: float) -> None:
        """A fresh measure of the Redis clock offset (see :meth:`attach`)."""
        self._offset_ms = offset_ms

    async def close(self) -> None:
        """Fail everything pending and stop the flusher."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.fail_all("redis bus closed")

    def submit(self, room: str, body: bytes, key: str | None) -> asyncio.Future[StreamPosition]:
        """Queue one publish (the bus checked it is up); its future answers the position."""
        loop = asyncio.get_running_loop()
        generated = key is None
        if key is None:
            self._keys += 1
            key = f"{self._key_prefix}{self._keys}"
        fut: asyncio.Future[StreamPosition] = loop.create_future()
        accepted = time.monotonic()
        self._queue.append(_Publish(room, body, key, generated, accepted,
                                    accepted + self.settings.request_timeout, fut))
        if not self._paused and (self._task is None or self._task.done()):
            self._task = loop.create_task(self._flusher())
        return fut

    def hold(self) -> None:
        """The connection failed: keep queued publishes for :meth:`resume`, each failing at
        its deadline."""
        self._paused = True
        held, self._queue = self._queue, []
        for pub in held:
            self._hold(pub)

    def _hold(self, pub: _Publish) -> None:
        if pub.fut.done():
            return
        self._held.append(pub)
        if pub.timer is None:
            pub.timer = asyncio.get_running_loop().call_later(
                max(0.0, pub.deadline - time.monotonic()), self._expire, pub)

    def _expire(self, pub: _Publish) -> None:
        if pub.fut.done():
            return
        REQUEST_FAILURES.inc("redis", "timeout")
        pub.fut.set_exception(BusUnavailable(
            f"redis bus: publish to {pub.room!r} not confirmed within "
            f"{self.settings.request_timeout}s (Redis unreachable). It is not applied later "
            "(Redis refuses it past its deadline); if it reached Redis before the loss, a retry "
            "with the same key answers its original position. Required action: retry after "
            "the bus recovers"))

    def resume(self) -> None:
        """The bus is back: send the held publishes again (before newer ones)."""
        self._paused = False
        held, self._held = self._held, []
        self._queue[:0] = [p for p in held if not p.fut.done()]
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    def fail_all(self, reason: str) -> None:
        """Fail every queued and held publish with ``reason``."""
        items, self._queue, self._held = self._queue + self._held, [], []
        for pub in items:
            if pub.timer is not None:
                pub.timer.cancel()
            if not pub.fut.done():
                REQUEST_FAILURES.inc("redis", "down")
                pub.fut.set_exception(BusUnavailable(
                    f"{reason}; publish not carried out. Required action: retry after the bus "
                    "recovers"))

    async def _flusher(self) -> None:
        limit = self.settings.publish_batch_max
        while self._queue and self._client is not None and not self._paused:
            batch = self._queue[:limit]
            del self._queue[:limit]
            try:
                results = await self._run_batch(batch)
            except (*CONN_ERRORS, RedisError) as exc:
                for pub in batch:
                    self._hold(pub)
                self.hold()
                self._mark_down(f"publish: {err_text(exc)}")
                return
            self._settle(batch, results)

    def _settle(self, batch: list[_Publish], results: list[Any]) -> None:
        dataset_lost = False
        for pub, res in zip(batch, results, strict=True):
            if pub.fut.done():
                continue
            if isinstance(res, Exception):
                text = str(res)
                if text.startswith("EPOCH"):
                    # Not applied (Redis lost its data): sent again after the reconnect
                    # re-seeded the counters, until its deadline.
                    dataset_lost = True
                    self._hold(pub)
                    continue
                REQUEST_FAILURES.inc("redis", "expired" if text.startswith("EXPIRED")
                                     else "script")
                pub.fut.set_exception(BusUnavailable(
                    f"redis bus: publish refused, not applied: {res}. Required action: retry "
                    "after the bus recovers"))
                continue
            if pub.timer is not None:
                pub.timer.cancel()
            seq, epoch, evicted, duplicate = res
            if duplicate:
                _M_DUPLICATES.inc("redis")
            else:
                _M_PUBLISHED.inc()
            if evicted:
                self._evicted(pub.room, int(evicted))
            pub.fut.set_result(StreamPosition(
                epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch), seq=int(seq)))
        if dataset_lost:
            self.hold()
            self._mark_down("Redis lost its data (epoch changed); re-seeding on reconnect")

    def _evicted(self, room: str, count: int) -> None:
        _M_EVICTED.inc("redis", amount=count)
        now = time.monotonic()
        if now - self._evictions_logged_at >= self.settings.history_ttl:
            self._evictions_logged_at = now
            _log.warning("bus_history_evicted", bus="redis", room=room, evicted=count,
                         limit_bytes=self.settings.history_max_bytes,
                         note="older messages are evicted before history_size; counted in "
                         "rtserver_bus_history_evicted_total, logged at most once per "
                         "history_ttl. Required action: raise bus.history_max_bytes if clients "
                         "must recover further back")

    async def _run_batch(self, batch: list[_Publish]) -> list[Any]:
        client = self._client
        assert client is not None
        s = self.settings
        ttl_ms = int(s.history_ttl * 1000)
        window_ms = int(s.idempotency_window * 1000)
        # A generated key only serves this publisher's retry, which stops at the
        # deadline: kept twice request_timeout, not the whole window.
        retry_ms = int(min(2 * s.request_timeout, s.idempotency_window) * 1000)
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            sha = self._sha["publish"]
            # The epoch a room gets if this publish creates its stream (rooms compare
            # epochs only with their own, so one candidate serves the whole batch).
            new_epoch = uuid.uuid4().hex[:12]
            for pub in batch:
                room = pub.room
                deadline_ms = int(pub.deadline * 1000 + self._offset_ms)
                pipe.evalsha(
                    sha, 6, self._k_seq + room, self._k_hist + room, self._k_ep + room,
                    self._k_dataset, self._k_hbytes + room, self._k_idem + pub.key,
                    self._ch_room + room, b"%b%.6f" % (self._origin, pub.accepted),
                    pub.body, s.history_size,
                    self._dataset, new_epoch, ttl_ms, s.history_max_bytes,
                    deadline_ms, retry_ms if pub.generated else window_ms, pub.key)
            _M_PUB_BATCHES.inc()
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and results and all(isinstance(r, NoScriptError) for r in results):
                # The script cache was flushed (SCRIPT FLUSH): nothing ran; load and redo once.
                _log.warning("bus_script_reload", bus="redis")
                self._sha["publish"] = str(await client.script_load(PUBLISH_LUA))
                continue
            return results
        raise ResponseError("publish script missing after reload")
