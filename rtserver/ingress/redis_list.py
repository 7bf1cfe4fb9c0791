"""Backend ingress through Redis (when the server runs with ``--redis``): ordered, at-least-once.

Backends ``RPUSH`` the same JSON payloads as the PostgreSQL ingress
(:mod:`rtserver.ingress.payloads`: ``room_publish``, ``user_notify``,
``quote_update``, ...) onto the list ``bus.ingress_key``. Unlike NOTIFY,
payloads pushed while no server runs wait in the list.

**One consumer over all workers and nodes.** Every worker of every node runs
one :class:`RedisIngress`; exactly one of them leads: the holder of the lock
``<key>:leader`` (``SET NX PX bus.ingress_lock_ttl``, renewed every third of
the TTL). The others stand by and try the lock every third of the TTL, so a
dead leader is replaced within about ``4/3 * ingress_lock_ttl`` seconds.

**Order and no loss.** The leader moves the oldest payload atomically onto
``<key>:processing`` (``LMOVE``/``BLMOVE``) and always handles the head of that
list, removing it only once carried out. A new leader therefore first
re-handles, in order, whatever a dead leader left there. Every step that
changes the lists checks the lock in the same Lua script, so a leader that
lost its lock changes nothing.

* A payload whose handling fails because a backend is down (``BusUnavailable``,
  ``StoreUnavailable``) is retried with :class:`rtserver.backoff.BackoffPolicy`
  (``bus.reconnect_backoff_base`` doubling up to ``bus.reconnect_backoff_max``,
  ``bus.reconnect_jitter``), each attempt logged (``redis_ingress_retry``) and
  counted (``rtserver_redis_ingress_retries_total``); the payloads after it
  wait (order is kept).
* A payload that can never be carried out (not JSON, schema, invalid room, no
  handler, refused by a domain with ``IngressRejected``, or a handler bug) is
  moved to the dead-letter list ``<key>:dead`` as pushed (replay it with
  ``LMOVE <key>:dead <key> LEFT RIGHT`` once fixed), logged with the reason
  (``redis_ingress_dead_letter``) and counted
  (``rtserver_redis_ingress_dead_letters_total{reason}``).

**At-least-once.** A leader that dies (or loses its lock) after carrying out a
payload but before removing it leaves it at the head of the processing list:
the next leader carries it out again. Consumers of ingress effects must
tolerate such a duplicate (clients de-duplicate room messages by ``seq``
gaps/content, notifications by id). A leader paused for longer than the lock
TTL between taking a payload and carrying it out may also carry it out
concurrently with its successor; that is the only window in which order can
break.

Redis errors are logged (``redis_ingress_error``), reported through
``on_state_change`` (health, admin alert) and retried with the same policy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import BusUnavailable
from rtserver.ingress.dispatch import IngressRejected
from rtserver.ingress.payloads import IngressDecoder, IngressInvalid, IngressMessage
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store.postgres import StoreUnavailable

__all__ = ["RedisIngress", "ingress_keys", "push_ingress"]

log = get_logger("rtserver.ingress.redis")
RECEIVED = REGISTRY.counter("rtserver_redis_ingress_received_total",
                            "Payloads taken from the Redis ingress list")
INVALID = REGISTRY.counter("rtserver_redis_ingress_invalid_total",
                           "Redis ingress payloads rejected as invalid")
FAILED = REGISTRY.counter("rtserver_redis_ingress_handler_errors_total",
                          "Redis ingress payloads whose handler raised an unexpected error")
DEAD = REGISTRY.counter("rtserver_redis_ingress_dead_letters_total",
                        "Redis ingress payloads moved to the dead-letter list", ("reason",))
RETRIES = REGISTRY.counter("rtserver_redis_ingress_retries_total",
                           "Redis ingress payloads retried because a backend was down",
                           ("cause",))
TAKEOVERS = REGISTRY.counter("rtserver_redis_ingress_leader_acquired_total",
                             "Times this process became the Redis ingress leader")
LOST = REGISTRY.counter("rtserver_redis_ingress_leader_lost_total",
                        "Times this process lost the Redis ingress leader lock")

# KEYS: lock, list, processing. ARGV: token. {0} lock lost, {1, head} to handle, {2} empty.
_TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local head = redis.call('LINDEX', KEYS[3], 0)
if head then return {1, head} end
local moved = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
if moved then return {1, moved} end
return {2}
"""
# KEYS: lock, processing, dead. ARGV: token, payload, "1" to dead-letter it.
# 0 lock lost, 1 removed, -1 the head is another payload.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return -1 end
redis.call('LPOP', KEYS[2])
if ARGV[3] == '1' then redis.call('RPUSH', KEYS[3], ARGV[2]) end
return 1
"""
# KEYS: lock. ARGV: token, ttl ms. 1 when held by token afterwards.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Exceptions that mean "a backend is down: retry the same payload".
RETRYABLE: tuple[type[Exception], ...] = (BusUnavailable, StoreUnavailable)


def ingress_keys(key: str) -> tuple[str, str, str]:
    """``(lock, processing, dead)``: the keys derived from the ingress list ``key``."""
    return f"{key}:leader", f"{key}:processing", f"{key}:dead"


class _LockLost(Exception):
    """The leader lock is no longer this instance's."""


class RedisIngress:
    """The one ordered, at-least-once consumer of a Redis ingress list (see the module doc).

    ``handler`` carries out one message and raises ``IngressRejected`` (never
    carried out: dead letter), ``BusUnavailable`` / ``StoreUnavailable`` (retry)
    or anything else (a bug: dead letter). ``block_timeout`` is
    ``bus.ingress_block_timeout``, ``lock_ttl`` ``bus.ingress_lock_ttl``;
    ``backoff_base``, ``backoff_max`` and ``jitter`` are
    ``bus.reconnect_backoff_base``, ``bus.reconnect_backoff_max`` and
    ``bus.reconnect_jitter``.
    """

    def __init__(self, url: str, key: str,
                 handler: Callable[[IngressMessage], Awaitable[None]], *,
                 decoder: IngressDecoder, block_timeout: float, lock_ttl: float,
                 backoff_base: float, backoff_max: float, jitter: float,
                 on_state_change: Callable[[bool, str | None], None]) -> None:
        if block_timeout <= 0 or lock_ttl <= 0:
            raise ValueError("bus.ingress_block_timeout and bus.ingress_lock_ttl must be > 0. "
                             "Required action: fix the [bus] ingress settings")
        self.url = url
        self.key = key
        self.lock_key, self.processing_key, self.dead_key = ingress_keys(key)
        #: This instance's lock value (also its Redis client name: ``rtserver-ingress-<token>``).
        self.token = uuid.uuid4().hex
        self._handler = handler
        self._decoder = decoder
        self._block_timeout = block_timeout
        self._ttl_ms = max(1, int(lock_ttl * 1000))
        self._renew_every = lock_ttl / 3
        self._backoff = BackoffPolicy(backoff_base, backoff_max, jitter)
        self._on_state_change = on_state_change
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ok = True
        self._leading = asyncio.Event()
        self.role: Literal["starting", "leader", "standby", "reconnecting", "closed"] = (
            "starting")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the consumer (inside the running loop)."""
        if self._task is not None:
            raise RuntimeError("RedisIngress.start() called twice")
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                             name="rtserver-redis-ingress")

    async def close(self) -> None:
        """Stop consuming and release the lock (a payload being handled stays for the next
        leader)."""
        # redis-py may turn a cancellation inside a command into a connection error:
        # the loops also stop on this flag, so close() always ends the task.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.role == "leader":
            client = self._client()
            try:
                await client.eval(_RELEASE, 1, self.lock_key, self.token)
            except (RedisError, OSError) as exc:
                log.warning("redis_ingress_release_failed", key=self.key, error=str(exc),
                            note="a standby takes over when the lock expires")
            finally:
                await client.aclose()
        self._set_role("closed", None)

    @property
    def is_leader(self) -> bool:
        """``True`` while this instance holds the leader lock."""
        return self._leading.is_set()

    async def wait_leader(self, timeout: float) -> None:
        """Wait until this instance leads (raises TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self._leading.wait()

    # ------------------------------------------------------------ state

    def _state(self, ok: bool, reason: str | None) -> None:
        if ok != self._ok:
            self._ok = ok
            self._on_state_change(ok, reason)

    def _set_role(self, role: Literal["leader", "standby", "reconnecting", "closed"],
                  reason: str | None) -> None:
        if role == "leader":
            self._leading.set()
        else:
            self._leading.clear()
        if role != self.role:
            if self.role == "leader" and role != "closed":
                LOST.inc()
            if role == "leader":
                TAKEOVERS.inc()
            log.info("redis_ingress_role", key=self.key, role=role, previous=self.role,
                     reason=reason)
            self.role = role

    def _client(self) -> aioredis.Redis:
        return aioredis.from_url(self.url, socket_timeout=self._block_timeout + 5.0,
                                 client_name=f"rtserver-ingress-{self.token}")

    # ------------------------------------------------------------ loops

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            client = self._client()
            try:
                while not self._closing:
                    held = await client.eval(_ACQUIRE, 1, self.lock_key, self.token,
                                             self._ttl_ms)
                    if attempt:
                        log.info("redis_ingress_recovered", key=self.key, attempts=attempt)
                        attempt = 0
                    self._state(True, None)
                    if held != 1:
                        self._set_role("standby", "another consumer holds the leader lock")
                        await asyncio.sleep(self._renew_every)
                        continue
                    self._set_role("leader", None)
                    await self._lead(client)
                    self._set_role("standby", "the leader lock was lost")
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                attempt += 1
                delay = self._backoff.delay(attempt)
                reason = f"redis ingress unavailable: {exc}"
                self._set_role("reconnecting", reason)
                self._state(False, reason)
                log.error("redis_ingress_error", key=self.key, error=str(exc), attempt=attempt,
                          retry_in=round(delay, 3))
                await asyncio.sleep(delay)
            finally:
                await client.aclose()

    async def _lead(self, client: aioredis.Redis) -> None:
        """Handle payloads while the lock is ours; returns when it is lost (raises the
        renewal's Redis error, so the consumer reconnects with backoff)."""
        lost = asyncio.Event()
        renew = asyncio.get_running_loop().create_task(self._renew(client, lost),
                                                       name="rtserver-redis-ingress-renew")
        try:
            await self._handle_while_leading(client, lost)
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
        failure = None if renew.cancelled() else renew.exception()
        if failure is not None:
            raise failure

    async def _handle_while_leading(self, client: aioredis.Redis, lost: asyncio.Event) -> None:
        while not lost.is_set() and not self._closing:
            reply = await client.eval(_TAKE, 3, self.lock_key, self.key,
                                      self.processing_key, self.token)
            if reply[0] == 0:
                return
            if reply[0] == 2:
                # Wait for a payload; it lands on the processing list, taken next turn.
                # Redis takes fractional seconds; the stub says int.
                await client.blmove(self.key, self.processing_key,
                                    self._block_timeout,  # type: ignore[arg-type]
                                    "LEFT", "RIGHT")
                continue
            raw = reply[1]
            payload = raw if isinstance(raw, bytes) else str(raw).encode()
            try:
                dead = await self._carry_out(payload, lost)
            except _LockLost:
                return
            done = await client.eval(_FINISH, 3, self.lock_key, self.processing_key,
                                     self.dead_key, self.token, payload, "1" if dead else "0")
            if done == 0:
                log.warning("redis_ingress_lock_lost_after_handling", key=self.key,
                            note="the next leader carries the payload out again "
                            "(at-least-once)")
                return
            if done == -1:
                log.error("redis_ingress_processing_changed", key=self.key,
                          action="Required action: only rtserver may change "
                          f"{self.processing_key}")

    async def _renew(self, client: aioredis.Redis, lost: asyncio.Event) -> None:
        """Renew the lock every third of its TTL; on failure set ``lost`` (and re-raise a
        Redis error, so the consumer reconnects)."""
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                renewed = await client.eval(_RENEW, 1, self.lock_key, self.token, self._ttl_ms)
            except (RedisError, OSError) as exc:
                lost.set()
                self._set_role("reconnecting", f"leader lock renewal failed: {exc}")
                raise
            if renewed != 1:
                log.warning("redis_ingress_lock_lost", key=self.key,
                            note="another consumer took the leader lock")
                lost.set()
                self._set_role("standby", "the leader lock was lost")
                return

    # ------------------------------------------------------------ one payload

    async def _carry_out(self, raw: bytes, lost: asyncio.Event) -> bool:
        """Carry ``raw`` out, retrying while a backend is down; ``True`` to dead-letter it."""
        RECEIVED.inc()
        try:
            message = self._decoder.decode(raw)
        except IngressInvalid as exc:
            INVALID.inc()
            self._dead(raw, exc.kind, str(exc), "fix the backend's payload (docs/store.md)")
            return True
        failures = 0
        while True:
            try:
                await self._handler(message)
            except IngressRejected as exc:
                self._dead(raw, exc.reason, exc.detail,
                           "fix the payload or the server's configuration as the detail says")
                return True
            except RETRYABLE as exc:
                failures += 1
                cause = "bus" if isinstance(exc, BusUnavailable) else "store"
                RETRIES.inc(cause)
                delay = self._backoff.delay(failures)
                reason = f"ingress payload held: {cause} unavailable: {exc}"
                self._state(False, reason)
                log.warning("redis_ingress_retry", key=self.key, cause=cause, error=str(exc),
                            message_type=type(message).__name__, attempt=failures,
                            retry_in=round(delay, 3),
                            note="later payloads wait: order is kept")
                try:
                    async with asyncio.timeout(delay):
                        await lost.wait()
                except TimeoutError:
                    continue
                raise _LockLost from exc
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the consumer
                FAILED.inc()
                self._dead(raw, "handler_error", repr(exc),
                           "report the bug; replay the payload from the dead-letter list")
                return True
            if failures:
                log.info("redis_ingress_retry_succeeded", key=self.key, attempts=failures + 1,
                         message_type=type(message).__name__)
                self._state(True, None)
            return False

    def _dead(self, raw: bytes, reason: str, detail: str, action: str) -> None:
        DEAD.inc(reason)
        log.error("redis_ingress_dead_letter", key=self.key, dead_key=self.dead_key,
                  reason=reason, detail=detail, payload=raw[:200].decode(errors="replace"),
                  action=f"Required action: {action}; then LMOVE {self.dead_key} {self.key} "
                  "LEFT RIGHT to replay")


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
