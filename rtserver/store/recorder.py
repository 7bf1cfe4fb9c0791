"""Connection records written off the hot path, in batches.

:class:`ConnectionRecorder` keeps one pending row per connection id (connect,
authentication, last activity and disconnect of one connection merge into one
row) and a background task upserts the pending rows every
``flush_interval`` seconds in statements of at most ``batch_max`` rows. The
``record_*`` and ``touch`` methods are plain synchronous calls that only update
a dict: message delivery never waits for the database.

Failure handling (never silent):

* Database unreachable or too slow: the rows stay queued, the recorder turns
  ``degraded``, calls ``on_state_change(False, reason)`` once (``reason``
  says why), and retries with the backoff policy of
  :class:`rtserver.backoff.BackoffPolicy` (``retry_backoff_base`` doubling up
  to ``retry_backoff_max``, no jitter), logging every retry
  (``connection_records_retry``). The first successful flush calls
  ``on_state_change(True, None)``.
* Queue full (``max_queued`` pending rows, in-flight rows included): the event
  is dropped, counted in ``lost_records`` and
  ``rtserver_connection_records_lost_total{reason}``, and logged
  (``connection_records_lost``, once per flush cycle with the count).
* A row the database rejects (a data error, not an outage): the batch is
  retried row by row and only the rejected rows are lost (counted, logged).
* :meth:`close` flushes what it can; what it cannot write is counted as lost
  and returned in the :class:`CloseReport`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
import orjson

from rtserver.backoff import BackoffPolicy
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store.models import ConnectionRow
from rtserver.store.pool import StoreUnavailable, check_ip
from rtserver.store.postgres import Store

__all__ = ["CloseReport", "ConnectionRecorder", "StateCallback"]

StateCallback = Callable[[bool, str | None], None]
"""``on_state_change(ok, reason)``: called when the recorder turns degraded or recovers."""

_log = get_logger("rtserver.store.recorder")
_lost_total = REGISTRY.counter(
    "rtserver_connection_records_lost_total",
    "Connection record events that could not be written (queue overflow, rejected, shutdown)",
    ("reason",),
)
_written_total = REGISTRY.counter(
    "rtserver_connection_records_written_total", "Connection rows upserted"
)
_flush_failures = REGISTRY.counter(
    "rtserver_connection_record_flush_failures_total",
    "Flushes of connection records that failed because the database was unavailable",
)

_DATA_ERRORS = (asyncpg.PostgresError, ValueError, TypeError)
"""Errors of the rows themselves (the database or the driver rejects a value)."""


class CloseReport(msgspec.Struct, frozen=True):
    """What :meth:`ConnectionRecorder.close` wrote and what it could not write."""

    flushed: int
    lost: int
    reason: str | None


class _Pending:
    __slots__ = (
        "admin_user_id", "close_code", "close_reason", "connected_at", "disconnected_at",
        "ip_address", "last_activity", "state_history", "user_agent", "user_id",
    )

    def __init__(self) -> None:
        self.user_id: str | None = None
        self.admin_user_id: str | None = None
        self.ip_address: str | None = None
        self.user_agent: str | None = None
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        self.last_activity: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: The connection's state transitions, JSON (set with its close).
        self.state_history: bytes | None = None

    def merge_newer(self, newer: _Pending) -> None:
        """Fold ``newer`` (events recorded after this row's) into this row."""
        for name in ("user_id", "admin_user_id", "ip_address", "user_agent",
                     "disconnected_at", "close_code", "close_reason", "state_history"):
            value = getattr(newer, name)
            if value is not None:
                setattr(self, name, value)
        if self.connected_at is None:
            self.connected_at = newer.connected_at
        if newer.last_activity is not None and (
            self.last_activity is None or newer.last_activity > self.last_activity
        ):
            self.last_activity = newer.last_activity


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class ConnectionRecorder:
    """Queue connection events and upsert them into ``websocket_connections`` in batches.

    Arguments (all from the ``[database]`` configuration):

    * ``store``: an open :class:`Store`.
    * ``worker``: this worker's number, stored on every row.
    * ``flush_interval``: seconds between flushes while healthy.
    * ``max_queued``: at most this many pending rows (one per connection id).
    * ``batch_max``: at most this many rows per statement.
    * ``retry_backoff_base`` / ``retry_backoff_max``: seconds before the first
      retry after a failed flush, doubling up to the maximum
      (a :class:`~rtserver.backoff.BackoffPolicy` without jitter).
    * ``on_state_change``: called with ``(False, reason)`` when writing starts
      failing and ``(True, None)`` when it works again (``None``: no callback).
    * ``activity_interval``: record a connection's activity at most once per
      this many seconds (``None``: record every :meth:`touch`).

    Call :meth:`start` inside the running loop, :meth:`close` at shutdown.
    """

    def __init__(
        self,
        store: Store,
        *,
        worker: int,
        flush_interval: float,
        max_queued: int,
        batch_max: int,
        retry_backoff_base: float,
        retry_backoff_max: float,
        on_state_change: StateCallback | None,
        activity_interval: float | None = None,
    ) -> None:
        if activity_interval is not None and activity_interval <= 0:
            raise ValueError(
                f"activity_interval={activity_interval} must be > 0 (or None to record every "
                "touch). Required action: set database.record_activity_interval"
            )
        if flush_interval <= 0 or retry_backoff_base <= 0 or retry_backoff_max < retry_backoff_base:
            raise ValueError(
                f"flush_interval={flush_interval} retry_backoff_base={retry_backoff_base} "
                f"retry_backoff_max={retry_backoff_max} are invalid. Required action: set "
                "positive values with retry_backoff_max >= retry_backoff_base"
            )
        if max_queued < 1 or batch_max < 1:
            raise ValueError(
                f"max_queued={max_queued} batch_max={batch_max} must be >= 1. "
                "Required action: set database.record_max_queued and database.record_batch_max"
            )
        self._store = store
        self._worker = worker
        self._flush_interval = flush_interval
        self._max_queued = max_queued
        self._batch_max = batch_max
        self._backoff = BackoffPolicy(retry_backoff_base, retry_backoff_max)
        self._on_state_change = on_state_change
        self._activity_interval = activity_interval
        self._last_touch: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self._inflight = 0
        self._lost = 0
        self._lost_unlogged = 0
        self._written = 0
        self._failures = 0
        self._state: Literal["ok", "degraded", "closed"] = "ok"
        self._reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Future[None] | None = None
        self._flush_lock = asyncio.Lock()

    # ------------------------------------------------------------ hot path (sync)

    def _entry(self, connection_id: str, kind: str) -> _Pending | None:
        entry = self._pending.get(connection_id)
        if entry is not None:
            return entry
        if self._state == "closed":
            self._lose(kind, 1, "closed")
            return None
        if len(self._pending) + self._inflight >= self._max_queued:
            self._lose(kind, 1, "overflow")
            return None
        entry = _Pending()
        self._pending[connection_id] = entry
        return entry

    def record_connect(
        self,
        connection_id: str,
        *,
        user_id: str | None,
        admin_user_id: str | None,
        ip_address: str | None,
        user_agent: str | None,
    ) -> None:
        """A connection was accepted (``ip_address`` must be an IP address or ``None``)."""
        check_ip(ip_address)
        now = time.time()
        if self._activity_interval is not None:
            self._last_touch[connection_id] = now
        entry = self._entry(connection_id, "connect")
        if entry is None:
            return
        entry.connected_at = now
        entry.last_activity = now
        entry.user_id = user_id
        entry.admin_user_id = admin_user_id
        entry.ip_address = ip_address
        entry.user_agent = user_agent

    def record_authenticated(
        self, connection_id: str, *, user_id: str, admin_user_id: str | None
    ) -> None:
        """The connection authenticated after connecting (``auth`` frame)."""
        entry = self._entry(connection_id, "authenticated")
        if entry is None:
            return
        entry.user_id = user_id
        entry.admin_user_id = admin_user_id

    def touch(self, connection_id: str) -> None:
        """The connection was active now (cheap: a dict lookup or two).

        With ``activity_interval``, a touch less than that many seconds after
        the last recorded one for this connection is not recorded: the stored
        ``last_activity`` is then accurate to ``activity_interval`` and busy
        connections do not turn into one upsert per connection per flush.
        """
        now = time.time()
        interval = self._activity_interval
        if interval is not None:
            last = self._last_touch.get(connection_id)
            if last is not None and now - last < interval:
                return
            self._last_touch[connection_id] = now
        entry = self._pending.get(connection_id) or self._entry(connection_id, "touch")
        if entry is not None:
            entry.last_activity = now

    def record_disconnect(
        self, connection_id: str, *, close_code: int | None, close_reason: str | None,
        state_history: list[dict[str, Any]] | None = None,
    ) -> None:
        """The connection closed with ``close_code`` / ``close_reason``; ``state_history``
        (:meth:`Connection.state_history`) is stored with it (``None``: none recorded)."""
        if self._activity_interval is not None:
            self._last_touch.pop(connection_id, None)
        entry = self._entry(connection_id, "disconnect")
        if entry is None:
            return
        now = time.time()
        entry.disconnected_at = now
        entry.last_activity = now
        entry.close_code = close_code
        entry.close_reason = close_reason
        if state_history is not None:
            entry.state_history = orjson.dumps(state_history)

    def _lose(self, kind: str, count: int, reason: str) -> None:
        first = self._lost == 0
        self._lost += count
        self._lost_unlogged += count
        _lost_total.inc(reason, amount=count)
        if first:
            _log.error(
                "connection_records_lost", reason=reason, kind=kind, count=count,
                lost_total=self._lost, max_queued=self._max_queued,
                action="check the database (connection_records_degraded gives the reason) "
                "or raise database.record_max_queued",
            )
            self._lost_unlogged = 0

    # ------------------------------------------------------------ state

    @property
    def lost_records(self) -> int:
        """Events that could not be written since start."""
        return self._lost

    def _set_state(self, ok: bool, reason: str | None) -> None:
        new_state: Literal["ok", "degraded"] = "ok" if ok else "degraded"
        changed = new_state != self._state
        self._state = new_state
        self._reason = reason
        if not changed:
            return
        if ok:
            _log.info("connection_records_recovered", written_total=self._written,
                      lost_total=self._lost)
        else:
            _log.error("connection_records_degraded", reason=reason,
                       queued=len(self._pending) + self._inflight,
                       action="check that PostgreSQL is reachable; records are kept and retried")
        callback = self._on_state_change
        if callback is not None:
            try:
                callback(ok, reason)
            except Exception as exc:  # noqa: BLE001 - a faulty callback must not stop recording
                _log.error("recorder_state_callback_failed", error=repr(exc))

    # ------------------------------------------------------------ flushing

    def start(self) -> None:
        """Start the background flush task (inside the running event loop)."""
        if self._task is not None:
            raise RuntimeError("ConnectionRecorder.start() called twice")
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        self._task = loop.create_task(self._run(), name="connection-recorder")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            reason = f"flush task crashed: {exc!r}"
            _log.error("recorder_task_crashed", error=repr(exc),
                       action="restart the worker; records are no longer written")
            self._set_state(False, reason)

    async def _run(self) -> None:
        assert self._stop is not None
        delay = self._flush_interval
        while not self._stop.done():
            await asyncio.wait({self._stop}, timeout=delay)
            if self._stop.done():
                return
            ok = await self.flush()
            if self._lost_unlogged:
                _log.error("connection_records_lost", count=self._lost_unlogged,
                           lost_total=self._lost,
                           reason="see rtserver_connection_records_lost_total")
                self._lost_unlogged = 0
            if ok:
                delay = self._flush_interval
            else:
                delay = self._backoff.delay(self._failures)
                _log.warning("connection_records_retry", in_seconds=delay,
                             failures=self._failures, queued=len(self._pending) + self._inflight)

    def _rows(self, items: list[tuple[str, _Pending]]) -> list[ConnectionRow]:
        return [
            ConnectionRow(
                connection_id=cid, worker=self._worker, user_id=p.user_id,
                admin_user_id=p.admin_user_id, ip_address=p.ip_address,
                user_agent=p.user_agent, connected_at=_dt(p.connected_at),
                disconnected_at=_dt(p.disconnected_at), last_activity=_dt(p.last_activity),
                close_code=p.close_code, close_reason=p.close_reason,
                state_history=p.state_history,
            )
            for cid, p in items
        ]

    def _requeue(self, items: list[tuple[str, _Pending]]) -> None:
        for cid, older in items:
            newer = self._pending.get(cid)
            if newer is not None:
                older.merge_newer(newer)
            self._pending[cid] = older

    async def flush(self) -> bool:
        """Write every pending row now; ``True`` when everything was written.

        On a database outage the rows stay queued and the recorder turns
        degraded; it never raises for database errors.
        """
        async with self._flush_lock:
            if not self._pending:
                if self._state == "degraded":
                    # Nothing to write: probe so that recovery is noticed.
                    try:
                        await self._store.ping()
                    except StoreUnavailable as exc:
                        self._failures += 1
                        self._set_state(False, str(exc))
                        return False
                    self._failures = 0
                    self._set_state(True, None)
                return True
            items = list(self._pending.items())
            self._pending = {}
            self._inflight = len(items)
            try:
                for start in range(0, len(items), self._batch_max):
                    chunk = items[start:start + self._batch_max]
                    try:
                        await self._write_chunk(chunk)
                    except StoreUnavailable as exc:
                        reason = str(exc)
                    except Exception as exc:  # noqa: BLE001 - keep the records, retry, say why
                        reason = (f"unexpected error while writing connection records: {exc!r}. "
                                  "Required action: report this error; records are kept and "
                                  "retried")
                        _log.error("connection_records_write_failed", error=repr(exc))
                    else:
                        self._inflight -= len(chunk)
                        continue
                    self._requeue(items[start:])
                    self._failures += 1
                    _flush_failures.inc()
                    self._set_state(False, reason)
                    return False
            finally:
                self._inflight = 0
            self._failures = 0
            if self._state == "degraded":
                self._set_state(True, None)
            return True

    async def _write_chunk(self, chunk: list[tuple[str, _Pending]]) -> None:
        rows = self._rows(chunk)
        try:
            await self._store.write_connection_rows(rows)
        except _DATA_ERRORS as exc:
            _log.error("connection_records_rejected", error=repr(exc), rows=len(rows),
                       action="retrying row by row; rejected rows are lost")
            for row in rows:
                try:
                    await self._store.write_connection_rows([row])
                except _DATA_ERRORS as row_exc:
                    self._lose("row", 1, "rejected")
                    _log.error("connection_record_rejected", connection_id=row.connection_id,
                               error=repr(row_exc))
                else:
                    self._written += 1
                    _written_total.inc()
            return
        self._written += len(rows)
        _written_total.inc(amount=len(rows))

    async def close(self) -> CloseReport:
        """Stop the flush task, flush once more, and report what could not be written."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        if self._task is not None:
            await self._task
        written_before = self._written
        ok = await self.flush()
        lost = 0
        reason: str | None = None
        if not ok:
            lost = len(self._pending)
            reason = self._reason
            self._pending = {}
            self._lose("shutdown", lost, "shutdown")
            _log.error("connection_records_lost_at_shutdown", count=lost, reason=reason,
                       action="the database was unavailable at shutdown; these records are gone")
        self._state = "closed"
        self._reason = reason
        return CloseReport(flushed=self._written - written_before, lost=lost, reason=reason)
