"""Backend ingress through Redis (when the server runs with ``--redis``).

Backends ``RPUSH`` the same JSON payloads as the PostgreSQL ingress
(:mod:`rtserver.store.ingress`: ``room_publish``, ``user_notify``,
``quote_update``, …) onto the list ``bus.ingress_key``. Every worker of every
node runs one :class:`RedisIngress` that ``BLPOP``s that list, so each payload
is taken by exactly one worker, which validates it and publishes it through
the bus to every worker and node. Unlike NOTIFY, payloads pushed while no
server runs wait in the list.

Invalid payloads are logged with the reason and counted; Redis errors are
logged, reported through ``on_state_change`` (health, admin alert) and retried
with :class:`rtserver.backoff.BackoffPolicy` (``bus.reconnect_backoff_base``
doubling up to ``bus.reconnect_backoff_max``, ``bus.reconnect_jitter``), each
attempt logged (``redis_ingress_error``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtserver.backoff import BackoffPolicy
from rtserver.ingress.payloads import IngressDecoder, IngressInvalid, IngressMessage
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["RedisIngress", "push_ingress"]

log = get_logger("rtserver.ingress.redis")
RECEIVED = REGISTRY.counter("rtserver_redis_ingress_received_total",
                            "Payloads taken from the Redis ingress list")
INVALID = REGISTRY.counter("rtserver_redis_ingress_invalid_total",
                           "Redis ingress payloads rejected as invalid")
FAILED = REGISTRY.counter("rtserver_redis_ingress_handler_errors_total",
                          "Redis ingress payloads whose handling raised")


class RedisIngress:
    """Take ingress payloads from a Redis list, one worker per payload.

    ``block_timeout`` is ``bus.ingress_block_timeout``; ``backoff_base``,
    ``backoff_max`` and ``jitter`` are ``bus.reconnect_backoff_base``,
    ``bus.reconnect_backoff_max`` and ``bus.reconnect_jitter``.
    """

    def __init__(self, url: str, key: str,
                 handler: Callable[[IngressMessage], Awaitable[None]], *,
                 decoder: IngressDecoder, block_timeout: float, backoff_base: float,
                 backoff_max: float, jitter: float,
                 on_state_change: Callable[[bool, str | None], None]) -> None:
        self.url = url
        self.key = key
        self._handler = handler
        self._decoder = decoder
        self._block_timeout = block_timeout
        self._backoff = BackoffPolicy(backoff_base, backoff_max, jitter)
        self._on_state_change = on_state_change
        self._task: asyncio.Task[None] | None = None
        self._ok = True

    def start(self) -> None:
        """Start the consuming task."""
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                             name="rtserver-redis-ingress")

    async def close(self) -> None:
        """Stop consuming."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _state(self, ok: bool, reason: str | None) -> None:
        if ok != self._ok:
            self._ok = ok
            self._on_state_change(ok, reason)

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = aioredis.from_url(self.url, socket_timeout=self._block_timeout + 5.0)
            try:
                while True:
                    item = await client.blpop([self.key], timeout=self._block_timeout)
                    if attempt:
                        log.info("redis_ingress_recovered", key=self.key, attempts=attempt)
                        attempt = 0
                    self._state(True, None)
                    if item is None:
                        continue
                    raw = item[1]
                    await self._handle(raw if isinstance(raw, bytes) else raw.encode())
            except (RedisError, OSError) as exc:
                attempt += 1
                delay = self._backoff.delay(attempt)
                reason = f"redis ingress unavailable: {exc}"
                self._state(False, reason)
                log.error("redis_ingress_error", key=self.key, error=str(exc), attempt=attempt,
                          retry_in=round(delay, 3))
                await asyncio.sleep(delay)
            finally:
                await client.aclose()

    async def _handle(self, raw: bytes) -> None:
        RECEIVED.inc()
        try:
            message = self._decoder.decode(raw)
        except IngressInvalid as exc:
            INVALID.inc()
            log.error("redis_ingress_invalid", key=self.key, reason=str(exc),
                      payload=raw[:200].decode(errors="replace"),
                      action="Required action: fix the backend's payload (docs/store.md)")
            return
        try:
            await self._handler(message)
        except Exception as exc:  # noqa: BLE001 - one bad payload must not stop the consumer
            FAILED.inc()
            log.error("redis_ingress_handler_failed", key=self.key,
                      message_type=type(message).__name__, error=repr(exc))


async def push_ingress(url: str, key: str, payload: bytes, decoder: IngressDecoder, *,
                       timeout: float) -> None:
    """Validate ``payload`` (with ``decoder``: the kinds the receivers accept) and ``RPUSH``
    it onto the ingress list (``publish --redis``)."""
    decoder.decode(payload)
    client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        await client.rpush(key, payload)
    finally:
        await client.aclose()
