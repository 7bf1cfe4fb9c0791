"""Backend ingress through PostgreSQL ``LISTEN/NOTIFY``.

Backend services (quote service, rating engine, scripts, ``rtserver publish``
/ ``rtserver notify``) send a JSON object with ``pg_notify(channel, payload)``
on the channel configured as ``database.ingress_channel`` (documented default
``rtserver_ingress``). The object is one of the enabled ingress kinds (see
:mod:`rtserver.ingress.payloads`), decoded by the node's
:class:`~rtserver.ingress.payloads.IngressDecoder`.

PostgreSQL limits a NOTIFY payload to less than 8000 bytes
(:data:`~rtserver.ingress.payloads.NOTIFY_PAYLOAD_MAX`); :func:`send_ingress`
rejects bigger payloads with ``IngressPayloadTooLarge`` (store the data in a
table and send its id instead).

Exactly one listener acts on each NOTIFY: every worker may run an
:class:`IngressListener`, but with ``elect_leader`` only the one holding the
channel's advisory lock (``pg_try_advisory_lock`` on its LISTEN connection)
listens; the others stand by and take over within
``standby_retry_interval`` when the leader's connection goes away. The
leader's handler publishes into the bus, which reaches every worker and node.

``LISTEN/NOTIFY`` is at-most-once: notifications sent while no listener is
connected (restart, failover) are lost. Durable data therefore lives in
tables first (the insurance domain's ``send_user_notification`` stores a
notification and sends its id in the same transaction).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Literal

import asyncpg

from rtserver.backoff import BackoffPolicy
from rtserver.ingress.payloads import IngressDecoder, IngressInvalid, IngressMessage
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store.pool import TRANSIENT_ERRORS

__all__ = [
    "IngressHandler",
    "IngressListener",
    "leader_lock_key",
    "send_ingress",
    "send_ingress_on",
    "validate_channel",
]

IngressHandler = Callable[[IngressMessage], Awaitable[None]]
"""Receives each valid ingress message, one at a time in arrival order."""

_CHANNEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_log = get_logger("rtserver.ingress.postgres")
_received = REGISTRY.counter("rtserver_ingress_received_total", "Ingress NOTIFY payloads received")
_invalid = REGISTRY.counter(
    "rtserver_ingress_invalid_total", "Ingress payloads rejected", ("kind",)
)
_dropped = REGISTRY.counter(
    "rtserver_ingress_dropped_total", "Valid ingress payloads dropped because the queue was full"
)
_handler_errors = REGISTRY.counter(
    "rtserver_ingress_handler_errors_total", "Ingress payloads whose handler raised"
)
_reconnects = REGISTRY.counter(
    "rtserver_ingress_reconnects_total", "LISTEN connections lost or failed to connect"
)

def validate_channel(channel: str) -> str:
    """Return ``channel`` if it is a plain lower-case identifier, else raise ValueError."""
    if not _CHANNEL_RE.match(channel):
        raise ValueError(
            f"ingress channel {channel!r} is not a lower-case identifier of at most 63 "
            "characters. Required action: set database.ingress_channel to e.g. rtserver_ingress"
        )
    return channel


def leader_lock_key(channel: str) -> int:
    """The advisory lock key that elects the one listener of ``channel``."""
    digest = hashlib.blake2b(b"rtserver-ingress:" + channel.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFFFFFFFFFF


async def send_ingress_on(conn: asyncpg.Connection, channel: str, payload: bytes,
                          decoder: IngressDecoder) -> None:
    """Validate ``payload`` (with ``decoder``: the kinds the receivers accept) and
    ``pg_notify`` it on an open connection.

    Raises :class:`IngressPayloadTooLarge` or :class:`IngressInvalid` before
    sending anything.
    """
    validate_channel(channel)
    decoder.check_notify(payload)
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload.decode())


async def send_ingress(dsn: str, channel: str, payload: bytes, decoder: IngressDecoder, *,
                       connect_timeout: float) -> None:
    """Validate ``payload`` and send it on ``channel`` (used by ``rtserver publish``)."""
    validate_channel(channel)
    decoder.check_notify(payload)
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        await send_ingress_on(conn, channel, payload, decoder)
    finally:
        await conn.close()


class IngressListener:
    """Listen on ``channel`` and hand each valid message to ``handler``, in order.

    Arguments (from the ``[database]`` configuration):

    * ``dsn``, ``channel``: where to LISTEN (a direct connection, not a
      transaction-pooling proxy).
    * ``decoder``: the node's decoder of the enabled ingress kinds.
    * ``handler``: ``async def handler(message)``; called one message at a
      time in arrival order; an exception is logged and counted and the next
      message is handled.
    * ``connect_timeout``: seconds per connection attempt and per keepalive probe.
    * ``keepalive_interval``: seconds between ``SELECT 1`` probes of the
      LISTEN connection (detects a dead connection without traffic).
    * ``reconnect_backoff_base`` / ``reconnect_backoff_max``: seconds before
      reconnecting, doubling up to the maximum (a
      :class:`~rtserver.backoff.BackoffPolicy` without jitter); every attempt
      is logged (``ingress_reconnecting``).
    * ``max_pending``: valid messages waiting for the handler; beyond it
      messages are dropped (counted and logged).
    * ``elect_leader``: hold the channel's advisory lock so that exactly one
      listener over every worker and node acts on each NOTIFY.
    * ``standby_retry_interval``: seconds between leader-lock attempts.
    * ``on_state_change``: ``(ok, reason)`` when listening stops or resumes.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        handler: IngressHandler,
        *,
        decoder: IngressDecoder,
        connect_timeout: float,
        keepalive_interval: float,
        reconnect_backoff_base: float,
        reconnect_backoff_max: float,
        max_pending: int,
        elect_leader: bool,
        standby_retry_interval: float,
        on_state_change: Callable[[bool, str | None], None] | None,
    ) -> None:
        if min(connect_timeout, keepalive_interval, reconnect_backoff_base,
               standby_retry_interval) <= 0 or reconnect_backoff_max < reconnect_backoff_base:
            raise ValueError(
                "ingress timeouts and intervals must be > 0 and reconnect_backoff_max >= "
                "reconnect_backoff_base. Required action: fix the [database] ingress settings"
            )
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1. Required action: set "
                             "database.ingress_max_pending")
        self.dsn = dsn
        self.channel = validate_channel(channel)
        self._handler = handler
        self._decoder = decoder
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_interval
        self._backoff = BackoffPolicy(reconnect_backoff_base, reconnect_backoff_max)
        self._elect = elect_leader
        self._standby_retry = standby_retry_interval
        self._on_state_change = on_state_change
        self._queue: asyncio.Queue[IngressMessage] = asyncio.Queue(maxsize=max_pending)
        self._state: Literal["starting", "listening", "standby", "reconnecting", "closed"] = (
            "starting"
        )
        self._reported_ok = True
        self._stop: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()

    # ------------------------------------------------------------ state

    def _set_state(
        self,
        state: Literal["listening", "standby", "reconnecting", "closed"],
        reason: str | None,
    ) -> None:
        previous = self._state
        self._state = state
        if state == "listening":
            self._listening.set()
        else:
            self._listening.clear()
        if state != previous:
            _log.info("ingress_state", state=state, previous=previous, reason=reason,
                      channel=self.channel)
        ok = state in ("listening", "standby")
        if state == "closed" or ok == self._reported_ok:
            return
        self._reported_ok = ok
        if self._on_state_change is not None:
            try:
                self._on_state_change(ok, reason)
            except Exception as exc:  # noqa: BLE001 - a faulty callback must not stop ingress
                _log.error("ingress_state_callback_failed", error=repr(exc))

    async def wait_listening(self, timeout: float) -> None:
        """Wait until this listener acts on NOTIFYs (raises TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self._listening.wait()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start listening in the background (inside the running loop)."""
        if self._tasks:
            raise RuntimeError("IngressListener.start() called twice")
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        self._tasks = [
            loop.create_task(self._run(), name=f"ingress-listen-{self.channel}"),
            loop.create_task(self._consume(), name=f"ingress-handle-{self.channel}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("ingress_task_crashed", task=task.get_name(), error=repr(exc),
                       action="restart the worker; ingress is not processed")
            self._set_state("reconnecting", f"task {task.get_name()} crashed: {exc!r}")

    async def close(self) -> None:
        """Stop listening; messages still queued for the handler are counted as dropped."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        left = self._queue.qsize()
        if left:
            _dropped.inc(amount=left)
            _log.error("ingress_dropped_at_shutdown", count=left, channel=self.channel)
        self._set_state("closed", None)

    # ------------------------------------------------------------ receiving

    def _on_notify(
        self, conn: object, pid: int, channel: str, payload: object
    ) -> None:
        _received.inc()
        text = payload if isinstance(payload, str) else str(payload)
        try:
            message = self._decoder.decode(text)
        except IngressInvalid as exc:
            _invalid.inc(exc.kind)
            _log.warning("ingress_invalid", channel=channel, sender_pid=pid, kind=exc.kind,
                         reason=str(exc),
                         payload=text[:200], action="fix the sender's payload")
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            _dropped.inc()
            _log.error("ingress_dropped", channel=channel, type=type(message).__name__,
                       reason="handler queue full",
                       action="raise database.ingress_max_pending or find the slow handler")

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._handler(message)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop ingress
                _handler_errors.inc()
                _log.error("ingress_handler_failed", type=type(message).__name__,
                           error=repr(exc))

    def _on_terminate(self, conn: object) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _wait_stop(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; ``True`` when close() was called."""
        assert self._stop is not None
        await asyncio.wait({self._stop}, timeout=timeout)
        return self._stop.done()

    async def _run(self) -> None:
        failures = 0
        while True:
            delay = self._backoff.delay(1)
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=self._connect_timeout,
                    server_settings={"application_name": f"rtserver-ingress-{self.channel}"},
                )
                self._lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(self._on_terminate)
                if self._elect:
                    key = leader_lock_key(self.channel)
                    while not await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", key, timeout=self._connect_timeout
                    ):
                        failures = 0
                        self._set_state("standby", "another listener holds the leader lock")
                        if await self._wait_stop(self._standby_retry):
                            return
                await conn.add_listener(self.channel, self._on_notify)
                failures = 0
                self._set_state("listening", None)
                _log.info("ingress_listening", channel=self.channel, leader=self._elect)
                while True:
                    assert self._stop is not None
                    await asyncio.wait({self._stop, self._lost}, timeout=self._keepalive)
                    if self._stop.done():
                        return
                    if self._lost.done():
                        raise ConnectionError("the LISTEN connection was closed")
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
            except TRANSIENT_ERRORS as exc:  # ConnectionError is an OSError
                failures += 1
                _reconnects.inc()
                delay = self._backoff.delay(failures)
                reason = f"LISTEN connection failed: {exc!r}"
                self._set_state("reconnecting", reason)
                _log.warning("ingress_reconnecting", channel=self.channel, error=repr(exc),
                             in_seconds=delay, failures=failures,
                             note="NOTIFYs sent while disconnected are lost")
            finally:
                if conn is not None:
                    conn.terminate()
            if await self._wait_stop(delay):
                return
