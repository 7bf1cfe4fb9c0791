"""The PostgreSQL store: one asyncpg pool and typed queries for every domain.

Domain handlers call these methods instead of writing SQL. Every method
acquires a connection with the configured ``pool_acquire_timeout``; every
query runs under the configured ``command_timeout`` (client side) and
``statement_timeout`` (server side). When the database cannot be reached, or
a bound is hit, the method raises :class:`StoreUnavailable` (message says what
happened and what to do), logs ``store_unavailable`` and counts
``rtserver_store_errors_total{op}``. Errors of the data itself (a constraint
violated, a malformed value) are raised as the asyncpg exception.

JSON values (notification data, quote fields, dashboard configurations, alert
details) go in as already-encoded JSON (``bytes`` or :class:`msgspec.Raw`) or
as any value :func:`msgspec.json.encode` accepts, and come back as
:class:`msgspec.Raw`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Literal, cast

import asyncpg
import msgspec

from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store import migrations
from rtserver.store.models import (
    AdminActivity,
    AdminUser,
    AlertResolution,
    ConnectionRecord,
    ConnectionRow,
    ConversionFunnel,
    Customer,
    Dashboard,
    Notification,
    NotificationPage,
    PoolState,
    Quote,
    QuoteNotFound,
    QuotesDashboard,
    SystemAlert,
    UpdateApplied,
    UpdateConflict,
    UpdateResult,
)

__all__ = [
    "ALERT_SEVERITIES",
    "TRANSIENT_ERRORS",
    "Store",
    "StoreUnavailable",
    "encode_json",
]

ALERT_SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # Raised when the server terminates a pooled connection in the middle of an operation.
    asyncpg.exceptions.InternalClientError,
)
"""Errors meaning "the database is unreachable, restarting, overloaded or too slow"."""

_log = get_logger("rtserver.store")
_errors = REGISTRY.counter(
    "rtserver_store_errors_total",
    "Store operations that failed because the database was unavailable or too slow",
    ("op",),
)


class StoreUnavailable(Exception):
    """The database could not serve a store operation (down, restarting, saturated, slow)."""


def encode_json(value: object) -> bytes:
    """JSON bytes for a JSONB parameter: bytes and Raw pass through, anything else is encoded."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, msgspec.Raw):
        return bytes(value)
    return msgspec.json.encode(value)


def _jsonb_encode(value: bytes) -> bytes:
    # JSONB binary format: a version byte (1) followed by the JSON text.
    return b"\x01" + value


def _jsonb_decode(data: bytes) -> msgspec.Raw:
    return msgspec.Raw(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode,
        format="binary",
    )


def _check_ip(ip_address: str | None) -> str | None:
    if ip_address is not None:
        try:
            ipaddress.ip_address(ip_address)
        except ValueError as exc:
            raise ValueError(
                f"ip_address {ip_address!r} is not an IP address. Required action: pass the "
                "peer's IP address (or None when there is none)"
            ) from exc
    return ip_address


# Column lists matching the Structs' fields, in order.
_CONNECTION_COLS = (
    "connection_id, worker, user_id, admin_user_id, host(ip_address) AS ip_address, user_agent, "
    "connected_at, disconnected_at, last_activity, close_code, close_reason"
)
_NOTIFICATION_COLS = "id, user_id, title, body, data, created_at, delivered_at, read_at"
_QUOTE_COLS = (
    "id, customer_id, state, status, total_premium::float8 AS total_premium, fields, version, "
    "created_at, updated_at, updated_by, converted_at"
)
_ACTIVITY_COLS = (
    "id, admin_user_id, action, resource_type, resource_id, status, details, "
    "host(ip_address) AS ip_address, user_agent, created_at"
)
_DASHBOARD_COLS = (
    "id, admin_user_id, dashboard_name, configuration, is_default, created_at, updated_at"
)
_ALERT_COLS = (
    "id, alert_type, severity, message, details, resolved, resolved_at, resolved_by, created_at"
)

_UPSERT_CONNECTIONS = """
INSERT INTO websocket_connections AS w (
    connection_id, worker, user_id, admin_user_id, ip_address, user_agent,
    connected_at, disconnected_at, last_activity, close_code, close_reason)
SELECT * FROM unnest(
    $1::text[], $2::int[], $3::text[], $4::text[], $5::inet[], $6::text[],
    $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int[], $11::text[])
ON CONFLICT (connection_id) DO UPDATE SET
    user_id = coalesce(EXCLUDED.user_id, w.user_id),
    admin_user_id = coalesce(EXCLUDED.admin_user_id, w.admin_user_id),
    ip_address = coalesce(EXCLUDED.ip_address, w.ip_address),
    user_agent = coalesce(EXCLUDED.user_agent, w.user_agent),
    connected_at = coalesce(w.connected_at, EXCLUDED.connected_at),
    disconnected_at = coalesce(EXCLUDED.disconnected_at, w.disconnected_at),
    last_activity = greatest(EXCLUDED.last_activity, w.last_activity),
    close_code = coalesce(EXCLUDED.close_code, w.close_code),
    close_reason = coalesce(EXCLUDED.close_reason, w.close_reason)
"""

_UPDATE_FIELD = """
WITH cur AS (
    SELECT id, version, fields -> $2::text AS value FROM quotes WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE quotes q
       SET fields = jsonb_set(q.fields, ARRAY[$2::text], $3::jsonb, true),
           version = q.version + 1, updated_at = now(), updated_by = $5
      FROM cur
     WHERE q.id = cur.id AND cur.version = $4
 RETURNING q.version
)
SELECT cur.version AS current_version, cur.value AS current_value, upd.version AS new_version
  FROM cur LEFT JOIN upd ON true
"""

_SET_STATUS = f"""
UPDATE quotes
   SET status = $2,
       total_premium = CASE WHEN $3::boolean THEN $4::numeric ELSE total_premium END,
       converted_at = CASE WHEN $2 = 'converted' THEN coalesce(converted_at, now())
                           ELSE converted_at END,
       version = version + 1, updated_at = now(), updated_by = $5
 WHERE id = $1
RETURNING {_QUOTE_COLS}
"""

_QUOTES_DASHBOARD = """
WITH params AS (
    SELECT now() AS t_now, now() - make_interval(hours => $1::int) AS since
), q AS (
    SELECT quotes.* FROM quotes, params
     WHERE created_at >= params.since AND created_at <= params.t_now
       AND ($2::text IS NULL OR state = $2::text)
)
SELECT jsonb_build_object(
    'hours', $1::int,
    'state_filter', $2::text,
    'total_quotes', (SELECT count(*) FROM q),
    'unique_customers', (SELECT count(DISTINCT customer_id) FROM q),
    'average_premium', (SELECT avg(total_premium)::float8 FROM q),
    'by_status', coalesce((
        SELECT jsonb_agg(jsonb_build_object('status', status, 'count', n) ORDER BY n DESC, status)
          FROM (SELECT status, count(*) AS n FROM q GROUP BY status) s), '[]'::jsonb),
    'timeline', (
        SELECT jsonb_agg(jsonb_build_object(
                   'hour', h, 'count', coalesce(c.n, 0), 'premium_total', coalesce(c.p, 0))
                   ORDER BY h)
          FROM params
         CROSS JOIN generate_series(date_trunc('hour', params.since),
                                    date_trunc('hour', params.t_now), interval '1 hour') AS h
          LEFT JOIN (SELECT date_trunc('hour', created_at) AS hh, count(*) AS n,
                            sum(total_premium)::float8 AS p
                       FROM q GROUP BY 1) c ON c.hh = h),
    'top_states', coalesce((
        SELECT jsonb_agg(jsonb_build_object('state', state, 'count', n) ORDER BY n DESC, state)
          FROM (SELECT state, count(*) AS n FROM q WHERE state IS NOT NULL
                 GROUP BY state ORDER BY n DESC, state LIMIT $3) s), '[]'::jsonb),
    'computed_at', (SELECT t_now FROM params)
)
"""

_CONVERSION_FUNNEL = """
WITH params AS (
    SELECT now() AS t_now, now() - make_interval(hours => $1::int) AS since
), q AS (
    SELECT quotes.* FROM quotes, params
     WHERE created_at >= params.since AND created_at <= params.t_now
), c AS (
    SELECT count(*) AS created,
           count(*) FILTER (WHERE total_premium IS NOT NULL) AS priced,
           count(*) FILTER (WHERE status = 'converted') AS converted,
           avg(extract(epoch FROM converted_at - created_at) / 3600.0)
               FILTER (WHERE status = 'converted' AND converted_at IS NOT NULL) AS avg_h
      FROM q
)
SELECT jsonb_build_object(
    'hours', $1::int,
    'created', c.created,
    'priced', c.priced,
    'converted', c.converted,
    'priced_rate', CASE WHEN c.created > 0 THEN c.priced::float8 / c.created END,
    'conversion_rate', CASE WHEN c.created > 0 THEN c.converted::float8 / c.created END,
    'average_hours_to_convert', c.avg_h::float8,
    'computed_at', (SELECT t_now FROM params)
) FROM c
"""

_RESOLVE_ALERT = f"""
WITH cur AS (
    SELECT {_ALERT_COLS} FROM system_alerts WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE system_alerts a SET resolved = true, resolved_at = now(), resolved_by = $2
      FROM cur WHERE a.id = cur.id AND NOT cur.resolved
 RETURNING {', '.join('a.' + c.strip() for c in _ALERT_COLS.split(','))}
)
SELECT 'resolved' AS outcome, upd.* FROM upd
UNION ALL
SELECT 'already_resolved' AS outcome, cur.* FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)
"""


class Store:
    """Typed access to the rtserver database through one asyncpg pool.

    Every argument is required and comes from the ``[database]`` section of
    the configuration (see docs/store.md):

    * ``dsn``: ``postgresql://user:password@host:port/database``.
    * ``pool_min_size`` / ``pool_max_size``: connections kept open / at most.
    * ``pool_acquire_timeout``: seconds to wait for a free connection.
    * ``pool_max_inactive_lifetime``: seconds after which an idle connection
      is closed (0 keeps them forever).
    * ``connect_timeout``: seconds for one connection attempt.
    * ``statement_timeout``: server-side limit per statement, seconds.
    * ``command_timeout``: client-side limit per query, seconds (also bounds
      :meth:`close`).
    * ``application_name``: shown in ``pg_stat_activity``.

    Call :meth:`open` before use and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        *,
        dsn: str,
        pool_min_size: int,
        pool_max_size: int,
        pool_acquire_timeout: float,
        pool_max_inactive_lifetime: float,
        connect_timeout: float,
        statement_timeout: float,
        command_timeout: float,
        application_name: str,
    ) -> None:
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise ValueError(
                f"pool sizes min={pool_min_size} max={pool_max_size} are invalid. Required "
                "action: set 0 <= database.pool_min_size <= database.pool_max_size, max >= 1"
            )
        for name, value in (
            ("pool_acquire_timeout", pool_acquire_timeout),
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
            ("command_timeout", command_timeout),
        ):
            if value <= 0:
                raise ValueError(
                    f"database.{name} must be > 0 seconds, got {value}. "
                    f"Required action: set database.{name} in the configuration"
                )
        self.dsn = dsn
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.pool_acquire_timeout = pool_acquire_timeout
        self.pool_max_inactive_lifetime = pool_max_inactive_lifetime
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.command_timeout = command_timeout
        self.application_name = application_name
        self._pool: asyncpg.Pool | None = None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the pool (opens ``pool_min_size`` connections).

        Raises :class:`StoreUnavailable` when the database cannot be reached.
        """
        if self._pool is not None:
            raise RuntimeError("Store.open() called twice. Required action: open a Store once")
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                max_inactive_connection_lifetime=self.pool_max_inactive_lifetime,
                command_timeout=self.command_timeout,
                timeout=self.connect_timeout,
                init=_init_connection,
                server_settings={
                    "statement_timeout": str(int(self.statement_timeout * 1000)),
                    "timezone": "UTC",
                    "application_name": self.application_name,
                },
            )
        except TRANSIENT_ERRORS as exc:
            _errors.inc("open")
            _log.error("store_open_failed", error=repr(exc))
            raise StoreUnavailable(
                f"cannot open the database pool: {exc!r}. Required action: check that "
                "PostgreSQL is running and database.dsn is right"
            ) from exc
        _log.info("store_opened", pool_min_size=self.pool_min_size,
                  pool_max_size=self.pool_max_size)

    async def close(self) -> None:
        """Close the pool, waiting at most ``command_timeout`` for busy connections."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.command_timeout):
                await pool.close()
        except TimeoutError:
            _log.warning("store_close_forced", waited=self.command_timeout)
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool (raises when :meth:`open` was not called)."""
        if self._pool is None:
            raise RuntimeError(
                "the Store is not open. Required action: await store.open() before using it"
            )
        return self._pool

    def pool_state(self) -> PoolState:
        """Size, idle and in-use connections of the pool (no I/O)."""
        pool = self._pool
        if pool is None:
            return PoolState(0, 0, 0, self.pool_min_size, self.pool_max_size)
        size = pool.get_size()
        idle = pool.get_idle_size()
        return PoolState(size, idle, size - idle, self.pool_min_size, self.pool_max_size)

    @contextlib.asynccontextmanager
    async def acquire(self, op: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for operation ``op``; transient failures become StoreUnavailable.

        For queries not covered by a method (analytics extensions); ``op``
        names the operation in logs and metrics.
        """
        pool = self.pool
        try:
            async with pool.acquire(timeout=self.pool_acquire_timeout) as conn:
                yield cast(asyncpg.Connection, conn)
        except TRANSIENT_ERRORS as exc:
            if isinstance(exc, ValueError):
                raise  # a client-side data error (asyncpg DataError), not an outage
            _errors.inc(op)
            _log.warning("store_unavailable", op=op, error=repr(exc))
            raise StoreUnavailable(
                f"database operation {op} failed: {exc!r}. Required action: check that "
                "PostgreSQL is reachable and not saturated (pool, statement_timeout), then retry"
            ) from exc

    async def ping(self) -> None:
        """Run ``SELECT 1`` (raises :class:`StoreUnavailable` when it cannot)."""
        async with self.acquire("ping") as conn:
            await conn.fetchval("SELECT 1")

    async def check_schema(self) -> int:
        """Verify the schema version (see :func:`rtserver.store.migrations.check_schema`)."""
        async with self.acquire("check_schema") as conn:
            return await migrations.check_schema(conn)

    # ------------------------------------------------------------ connections

    async def write_connection_rows(self, rows: Sequence[ConnectionRow]) -> None:
        """Upsert connection records on ``connection_id`` in one statement.

        ``rows`` must not repeat a ``connection_id``. ``None`` fields keep the
        stored value; ``connected_at`` keeps the first one; ``last_activity``
        keeps the latest.
        """
        if not rows:
            return
        cols: list[list[Any]] = [[] for _ in range(11)]
        for r in rows:
            for i, v in enumerate((
                r.connection_id, r.worker, r.user_id, r.admin_user_id, r.ip_address,
                r.user_agent, r.connected_at, r.disconnected_at, r.last_activity,
                r.close_code, r.close_reason,
            )):
                cols[i].append(v)
        async with self.acquire("write_connections") as conn:
            await conn.execute(_UPSERT_CONNECTIONS, *cols)

    async def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        """The stored record of one connection."""
        async with self.acquire("get_connection") as conn:
            rec = await conn.fetchrow(
                f"SELECT {_CONNECTION_COLS} FROM websocket_connections WHERE connection_id = $1",
                connection_id,
            )
        return None if rec is None else ConnectionRecord(**dict(rec))

    async def open_connection_counts(self) -> dict[int, int]:
        """Connections without a disconnect record, by worker."""
        async with self.acquire("open_connection_counts") as conn:
            rows = await conn.fetch(
                "SELECT worker, count(*) AS n FROM websocket_connections "
                "WHERE disconnected_at IS NULL GROUP BY worker"
            )
        return {int(r["worker"]): int(r["n"]) for r in rows}

    # ------------------------------------------------------------ notifications

    async def create_notification(
        self, user_id: str, title: str, body: str, data: object
    ) -> Notification:
        """Store a notification for ``user_id`` (pending until marked delivered)."""
        async with self.acquire("create_notification") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO notifications (user_id, title, body, data) VALUES ($1, $2, $3, $4) "
                f"RETURNING {_NOTIFICATION_COLS}",
                user_id, title, body, encode_json(data),
            )
        assert rec is not None
        return Notification(**dict(rec))

    async def get_notification(self, notification_id: int) -> Notification | None:
        """One notification by id (not scoped to a user: for server-side use only)."""
        async with self.acquire("get_notification") as conn:
            rec = await conn.fetchrow(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications WHERE id = $1", notification_id
            )
        return None if rec is None else Notification(**dict(rec))

    async def pending_notifications(self, user_id: str, limit: int) -> list[Notification]:
        """Up to ``limit`` undelivered notifications of ``user_id``, oldest first (id order)."""
        async with self.acquire("pending_notifications") as conn:
            rows = await conn.fetch(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications "
                "WHERE user_id = $1 AND delivered_at IS NULL ORDER BY id LIMIT $2",
                user_id, limit,
            )
        return [Notification(**dict(r)) for r in rows]

    async def claim_pending_notifications(self, user_id: str, limit: int) -> list[Notification]:
        """Mark up to ``limit`` undelivered notifications delivered and return them, oldest first.

        Atomic: two connections of the same user claiming at the same moment
        never get the same notification (at-most-once; use
        :meth:`pending_notifications` + :meth:`mark_delivered` for
        at-least-once).
        """
        async with self.acquire("claim_pending_notifications") as conn:
            rows = await conn.fetch(
                f"""
                WITH picked AS (
                    SELECT id FROM notifications
                     WHERE user_id = $1 AND delivered_at IS NULL
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
                )
                UPDATE notifications n SET delivered_at = now()
                  FROM picked WHERE n.id = picked.id AND n.delivered_at IS NULL
                RETURNING {', '.join('n.' + c.strip() for c in _NOTIFICATION_COLS.split(','))}
                """,
                user_id, limit,
            )
        return sorted((Notification(**dict(r)) for r in rows), key=lambda n: n.id)

    async def mark_delivered(self, ids: Sequence[int]) -> int:
        """Mark notifications delivered (those not yet delivered); return how many changed."""
        if not ids:
            return 0
        async with self.acquire("mark_delivered") as conn:
            status = await conn.execute(
                "UPDATE notifications SET delivered_at = now() "
                "WHERE id = ANY($1::bigint[]) AND delivered_at IS NULL",
                list(ids),
            )
        return int(status.rsplit(" ", 1)[1])

    async def mark_read(self, user_id: str, notification_id: int) -> Notification | None:
        """Mark one of ``user_id``'s notifications read (and delivered).

        Returns the notification, or ``None`` when ``user_id`` has no
        notification with this id (another user's id is not found, not an
        authorization leak). Marking twice keeps the first ``read_at``.
        """
        async with self.acquire("mark_read") as conn:
            rec = await conn.fetchrow(
                "UPDATE notifications SET read_at = coalesce(read_at, now()), "
                "delivered_at = coalesce(delivered_at, now()) "
                f"WHERE id = $2 AND user_id = $1 RETURNING {_NOTIFICATION_COLS}",
                user_id, notification_id,
            )
        return None if rec is None else Notification(**dict(rec))

    async def list_notifications(
        self, user_id: str, *, unread_only: bool, limit: int, before_id: int | None
    ) -> NotificationPage:
        """A page of ``user_id``'s notifications, newest first.

        ``before_id`` continues after a previous page (its ``next_before_id``);
        ``None`` starts at the newest.
        """
        async with self.acquire("list_notifications") as conn:
            rows = await conn.fetch(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications "
                "WHERE user_id = $1 AND ($2::bool IS FALSE OR read_at IS NULL) "
                "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                user_id, unread_only, before_id, limit + 1,
            )
        items = [Notification(**dict(r)) for r in rows[:limit]]
        more = len(rows) > limit
        return NotificationPage(items, items[-1].id if more and items else None)

    # ------------------------------------------------------------ customers and quotes

    async def insert_customer(
        self, *, email: str | None, name: str | None, state: str | None
    ) -> Customer:
        """Create a customer."""
        async with self.acquire("insert_customer") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO customers (email, name, state) VALUES ($1, $2, $3) "
                "RETURNING id, email, name, state, created_at",
                email, name, state,
            )
        assert rec is not None
        return Customer(**dict(rec))

    async def insert_quote(
        self,
        *,
        customer_id: uuid.UUID | None,
        state: str | None,
        status: str,
        total_premium: float | None,
        fields: object,
        created_at: datetime | None,
    ) -> Quote:
        """Create a quote at version 1 (``created_at`` ``None`` means now).

        ``fields`` must encode to a JSON object.
        """
        async with self.acquire("insert_quote") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO quotes (customer_id, state, status, total_premium, fields, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), "
                f"coalesce($6, now())) RETURNING {_QUOTE_COLS}",
                customer_id, state, status, total_premium, encode_json(fields), created_at,
            )
        assert rec is not None
        return Quote(**dict(rec))

    async def get_quote(self, quote_id: uuid.UUID) -> Quote | None:
        """One quote with its current version."""
        async with self.acquire("get_quote") as conn:
            rec = await conn.fetchrow(f"SELECT {_QUOTE_COLS} FROM quotes WHERE id = $1", quote_id)
        return None if rec is None else Quote(**dict(rec))

    async def update_field(
        self,
        quote_id: uuid.UUID,
        field: str,
        value: object,
        base_version: int,
        updated_by: str,
    ) -> UpdateResult:
        """Set ``fields[field] = value`` if the quote is still at ``base_version``.

        One statement: the row is locked, its version compared and, when equal,
        the field written and the version incremented. Concurrent updates with
        the same ``base_version`` (any worker, any node) see exactly one
        :class:`UpdateApplied`; the others get :class:`UpdateConflict` with
        the value and version written by the winner. ``field`` is a top-level
        key of ``quotes.fields`` (validate it against the editable list before).
        """
        async with self.acquire("update_field") as conn:
            rec = await conn.fetchrow(
                _UPDATE_FIELD, quote_id, field, encode_json(value), base_version, updated_by
            )
        if rec is None:
            return QuoteNotFound(quote_id)
        if rec["new_version"] is not None:
            return UpdateApplied(int(rec["new_version"]))
        return UpdateConflict(rec["current_value"], int(rec["current_version"]))

    async def set_quote_status(
        self,
        quote_id: uuid.UUID,
        status: str,
        *,
        total_premium: float | None,
        set_premium: bool,
        updated_by: str,
    ) -> Quote | None:
        """Change a quote's status (and premium when ``set_premium``); version + 1.

        Status ``converted`` stamps ``converted_at`` (once). Returns the
        updated quote or ``None`` when it does not exist.
        """
        async with self.acquire("set_quote_status") as conn:
            rec = await conn.fetchrow(
                _SET_STATUS, quote_id, status, set_premium, total_premium, updated_by
            )
        return None if rec is None else Quote(**dict(rec))

    # ------------------------------------------------------------ analytics

    async def quotes_dashboard(
        self, *, hours: int, state: str | None, top_states: int
    ) -> QuotesDashboard:
        """Aggregates of quotes created in the last ``hours`` hours (one statement).

        ``state`` narrows to one state (``None``: all); ``top_states`` is how
        many states to list.
        """
        if hours < 1 or top_states < 0:
            raise ValueError(
                f"hours={hours} top_states={top_states} out of range. "
                "Required action: pass hours >= 1 and top_states >= 0"
            )
        async with self.acquire("quotes_dashboard") as conn:
            raw = await conn.fetchval(_QUOTES_DASHBOARD, hours, state, top_states)
        return msgspec.json.decode(raw, type=QuotesDashboard)

    async def conversion_funnel(self, *, hours: int) -> ConversionFunnel:
        """Conversion funnel of quotes created in the last ``hours`` hours (one statement)."""
        if hours < 1:
            raise ValueError(f"hours={hours} out of range. Required action: pass hours >= 1")
        async with self.acquire("conversion_funnel") as conn:
            raw = await conn.fetchval(_CONVERSION_FUNNEL, hours)
        return msgspec.json.decode(raw, type=ConversionFunnel)

    # ------------------------------------------------------------ admin users and activity

    async def create_admin_user(
        self, *, email: str, name: str | None, permissions: Sequence[str]
    ) -> AdminUser:
        """Create an admin user."""
        async with self.acquire("create_admin_user") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO admin_users (email, name, permissions) VALUES ($1, $2, $3) "
                "RETURNING id, email, name, permissions, is_active, created_at",
                email, name, list(permissions),
            )
        assert rec is not None
        return AdminUser(**dict(rec))

    async def get_admin_user(self, admin_user_id: str) -> AdminUser | None:
        """One admin user."""
        async with self.acquire("get_admin_user") as conn:
            rec = await conn.fetchrow(
                "SELECT id, email, name, permissions, is_active, created_at "
                "FROM admin_users WHERE id = $1",
                admin_user_id,
            )
        return None if rec is None else AdminUser(**dict(rec))

    async def log_admin_activity(
        self,
        *,
        admin_user_id: str,
        action: str,
        resource_type: str | None,
        resource_id: str | None,
        status: str,
        details: object,
        ip_address: str | None,
        user_agent: str | None,
    ) -> AdminActivity:
        """Append one admin activity record."""
        _check_ip(ip_address)
        async with self.acquire("log_admin_activity") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO admin_activity_logs (admin_user_id, action, resource_type, "
                "resource_id, status, details, ip_address, user_agent) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8) "
                f"RETURNING {_ACTIVITY_COLS}",
                admin_user_id, action, resource_type, resource_id, status,
                encode_json(details), ip_address, user_agent,
            )
        assert rec is not None
        return AdminActivity(**dict(rec))

    async def query_admin_activity(
        self,
        *,
        admin_user_id: str | None,
        action: str | None,
        resource_type: str | None,
        status: str | None,
        since: datetime | None,
        until: datetime | None,
        before_id: int | None,
        limit: int,
    ) -> list[AdminActivity]:
        """Admin activity matching every given filter (``None`` = any), newest first."""
        async with self.acquire("query_admin_activity") as conn:
            rows = await conn.fetch(
                f"SELECT {_ACTIVITY_COLS} FROM admin_activity_logs "
                "WHERE ($1::text IS NULL OR admin_user_id = $1) "
                "AND ($2::text IS NULL OR action = $2) "
                "AND ($3::text IS NULL OR resource_type = $3) "
                "AND ($4::text IS NULL OR status = $4) "
                "AND ($5::timestamptz IS NULL OR created_at >= $5) "
                "AND ($6::timestamptz IS NULL OR created_at < $6) "
                "AND ($7::bigint IS NULL OR id < $7) "
                "ORDER BY id DESC LIMIT $8",
                admin_user_id, action, resource_type, status, since, until, before_id, limit,
            )
        return [AdminActivity(**dict(r)) for r in rows]

    # ------------------------------------------------------------ dashboards

    async def save_dashboard(
        self, *, admin_user_id: str, dashboard_name: str, configuration: object,
        is_default: bool,
    ) -> Dashboard:
        """Create or replace ``admin_user_id``'s dashboard ``dashboard_name``.

        With ``is_default`` the admin's other dashboards stop being default
        (same transaction).
        """
        async with self.acquire("save_dashboard") as conn, conn.transaction():
            if is_default:
                await conn.execute(
                    "UPDATE admin_dashboards SET is_default = false, updated_at = now() "
                    "WHERE admin_user_id = $1 AND is_default AND dashboard_name <> $2",
                    admin_user_id, dashboard_name,
                )
            rec = await conn.fetchrow(
                "INSERT INTO admin_dashboards (admin_user_id, dashboard_name, configuration, "
                "is_default) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (admin_user_id, dashboard_name) DO UPDATE SET "
                "configuration = EXCLUDED.configuration, is_default = EXCLUDED.is_default, "
                f"updated_at = now() RETURNING {_DASHBOARD_COLS}",
                admin_user_id, dashboard_name, encode_json(configuration), is_default,
            )
        assert rec is not None
        return Dashboard(**dict(rec))

    async def list_dashboards(self, admin_user_id: str) -> list[Dashboard]:
        """``admin_user_id``'s saved dashboards, default first then by name."""
        async with self.acquire("list_dashboards") as conn:
            rows = await conn.fetch(
                f"SELECT {_DASHBOARD_COLS} FROM admin_dashboards WHERE admin_user_id = $1 "
                "ORDER BY is_default DESC, dashboard_name",
                admin_user_id,
            )
        return [Dashboard(**dict(r)) for r in rows]

    async def delete_dashboard(self, admin_user_id: str, dashboard_name: str) -> bool:
        """Delete one saved dashboard; ``False`` when it did not exist."""
        async with self.acquire("delete_dashboard") as conn:
            status = await conn.execute(
                "DELETE FROM admin_dashboards WHERE admin_user_id = $1 AND dashboard_name = $2",
                admin_user_id, dashboard_name,
            )
        return status != "DELETE 0"

    # ------------------------------------------------------------ alerts

    async def create_alert(
        self, *, alert_type: str, severity: str, message: str, details: object
    ) -> SystemAlert:
        """Store a new (unresolved) alert; ``severity`` is one of :data:`ALERT_SEVERITIES`."""
        if severity not in ALERT_SEVERITIES:
            raise ValueError(
                f"alert severity {severity!r} is not one of {ALERT_SEVERITIES}. "
                "Required action: use low, medium, high or critical"
            )
        async with self.acquire("create_alert") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO system_alerts (alert_type, severity, message, details) "
                f"VALUES ($1, $2, $3, $4) RETURNING {_ALERT_COLS}",
                alert_type, severity, message, encode_json(details),
            )
        assert rec is not None
        return SystemAlert(**dict(rec))

    async def resolve_alert(self, alert_id: int, resolved_by: str) -> AlertResolution:
        """Resolve an alert once (one statement; concurrent resolvers: exactly one wins)."""
        async with self.acquire("resolve_alert") as conn:
            rec = await conn.fetchrow(_RESOLVE_ALERT, alert_id, resolved_by)
        if rec is None:
            return AlertResolution("not_found", None)
        fields = dict(rec)
        outcome: Literal["resolved", "already_resolved"] = fields.pop("outcome")
        return AlertResolution(outcome, SystemAlert(**fields))

    async def get_alert(self, alert_id: int) -> SystemAlert | None:
        """One alert."""
        async with self.acquire("get_alert") as conn:
            rec = await conn.fetchrow(
                f"SELECT {_ALERT_COLS} FROM system_alerts WHERE id = $1", alert_id
            )
        return None if rec is None else SystemAlert(**dict(rec))

    async def list_alerts(
        self, *, resolved: bool | None, severity: str | None, before_id: int | None, limit: int
    ) -> list[SystemAlert]:
        """Alerts newest first, filtered by ``resolved`` / ``severity`` (``None`` = any)."""
        async with self.acquire("list_alerts") as conn:
            rows = await conn.fetch(
                f"SELECT {_ALERT_COLS} FROM system_alerts "
                "WHERE ($1::bool IS NULL OR resolved = $1) "
                "AND ($2::text IS NULL OR severity = $2) "
                "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                resolved, severity, before_id, limit,
            )
        return [SystemAlert(**dict(r)) for r in rows]

    async def list_unresolved_alerts(self, limit: int) -> list[SystemAlert]:
        """Unresolved alerts, newest first."""
        async with self.acquire("list_unresolved_alerts") as conn:
            rows = await conn.fetch(
                f"SELECT {_ALERT_COLS} FROM system_alerts WHERE NOT resolved "
                "ORDER BY created_at DESC, id DESC LIMIT $1",
                limit,
            )
        return [SystemAlert(**dict(r)) for r in rows]
