"""Queries the domain handlers need beyond :class:`rtserver.store.Store`'s methods.

SQL lives here, never inline in handlers. Everything goes through
:meth:`Store.acquire` (pool, timeouts, :class:`~rtserver.store.StoreUnavailable`)
except :class:`IntervalClaims`, which keeps one dedicated connection because
its advisory locks must outlive a pooled checkout.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime

import asyncpg

from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store import AdminActivity, Store, StoreUnavailable, SystemAlert
from rtserver.store.alerts import ALERT_COLS
from rtserver.store.postgres import TRANSIENT_ERRORS

__all__ = [
    "IntervalClaims",
    "activity_after",
    "alert_history",
    "claim_key",
    "create_shared_alert",
    "unresolved_alert_count",
]

_log = get_logger("rtserver.domains.insurance.queries")
_CLAIM_ERRORS = REGISTRY.counter(
    "rtserver_analytics_claim_errors_total",
    "Analytics interval claims that failed because the claim connection was unavailable")

_ACTIVITY_COLS = (
    "id, admin_user_id, action, resource_type, resource_id, status, details, "
    "host(ip_address) AS ip_address, user_agent, created_at"
)


async def create_shared_alert(store: Store, *, alert_type: str, severity: str, message: str,
                              details: bytes, component: str, state_types: tuple[str, ...],
                              window: float) -> tuple[SystemAlert, bool]:
    """Store an alert about a shared component (bus, database) once per cluster.

    Under a transaction-scoped advisory lock on the component: when the latest alert
    of ``state_types`` about ``component`` within ``window`` seconds is already
    ``alert_type`` (another worker reported the same state change), that alert and
    ``True`` (a duplicate, nothing stored); else the new alert and ``False``. A
    component that changes state again (recovered, then down) is stored again.
    """
    async with store.acquire("create_shared_alert") as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)",
                           claim_key(f"shared-alert:{component}"))
        latest = await conn.fetchrow(
            f"SELECT {ALERT_COLS} FROM system_alerts "
            "WHERE created_at > now() - make_interval(secs => $1) "
            "AND details->>'component' = $2 AND alert_type = ANY($3::text[]) "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            window, component, list(state_types))
        if latest is not None and latest["alert_type"] == alert_type:
            return SystemAlert(**dict(latest)), True
        rec = await conn.fetchrow(
            "INSERT INTO system_alerts (alert_type, severity, message, details) "
            f"VALUES ($1, $2, $3, $4) RETURNING {ALERT_COLS}",
            alert_type, severity, message, details)
    assert rec is not None
    return SystemAlert(**dict(rec)), False


async def alert_history(store: Store, *, resolved: bool | None, limit: int) -> list[SystemAlert]:
    """Alerts newest first: all, only the resolved or only the open ones."""
    async with store.acquire("alert_history") as conn:
        rows = await conn.fetch(
            f"SELECT {ALERT_COLS} FROM system_alerts "
            "WHERE ($1::boolean IS NULL OR resolved = $1) "
            "ORDER BY created_at DESC, id DESC LIMIT $2", resolved, limit)
    return [SystemAlert(**dict(r)) for r in rows]


async def activity_after(
    store: Store,
    *,
    after_id: int,
    since: datetime,
    admin_user_id: str | None,
    action: str | None,
    resource_type: str | None,
    status: str | None,
    limit: int,
) -> list[AdminActivity]:
    """Admin activity rows with ``id > after_id`` matching the filters, oldest first."""
    async with store.acquire("activity_after") as conn:
        rows = await conn.fetch(
            f"SELECT {_ACTIVITY_COLS} FROM admin_activity_logs "
            "WHERE id > $1 AND created_at >= $2 "
            "AND ($3::text IS NULL OR admin_user_id = $3) "
            "AND ($4::text IS NULL OR action = $4) "
            "AND ($5::text IS NULL OR resource_type = $5) "
            "AND ($6::text IS NULL OR status = $6) "
            "ORDER BY id LIMIT $7",
            after_id, since, admin_user_id, action, resource_type, status, limit,
        )
    return [AdminActivity(**dict(r)) for r in rows]


async def unresolved_alert_count(store: Store) -> int:
    """Number of unresolved system alerts."""
    async with store.acquire("unresolved_alert_count") as conn:
        value = await conn.fetchval("SELECT count(*) FROM system_alerts WHERE NOT resolved")
    return int(value)


def claim_key(name: str) -> int:
    """A signed 32-bit advisory-lock key for ``name`` (e.g. an analytics room)."""
    digest = hashlib.blake2b(b"rtserver-analytics:" + name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class IntervalClaims:
    """Exactly one claimant per (key, interval number) over every worker and node.

    ``try_claim(key, n)`` runs ``pg_try_advisory_lock(key, n)`` on a dedicated
    session: the first caller gets the lock and keeps it (session locks
    survive transactions), so every later caller for the same (key, n) is
    refused, however late it comes. Each claimant releases its locks of older
    intervals (``n - 2`` and before) as it claims newer ones, and every lock of
    a key when :meth:`release_key` is called; a lost session releases all of
    them (the next interval is then claimed afresh: at-least-once only across
    a claim-connection failure). The two-int4 lock space does not collide with
    the ingress leader lock (one bigint key).

    The connection is opened on first use with the store's DSN and
    ``connect_timeout``; a failure raises :class:`StoreUnavailable` and the
    next call reconnects.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._held: dict[int, set[int]] = {}

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        self._held.clear()  # a new session holds nothing
        conn = await asyncpg.connect(
            self._store.dsn, timeout=self._store.connect_timeout,
            command_timeout=self._store.command_timeout,
            server_settings={"application_name": f"{self._store.application_name}-claims"})
        self._conn = conn
        return conn

    async def try_claim(self, key: int, interval_no: int) -> bool:
        """Claim interval ``interval_no`` of ``key``; False when another claimant has it."""
        n = interval_no % (2 ** 31)
        async with self._lock:
            try:
                conn = await self._connection()
                got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", key, n))
                held = self._held.setdefault(key, set())
                if got:
                    held.add(n)
                for old in [x for x in held if x < n - 1]:
                    await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", key, old)
                    held.discard(old)
            except TRANSIENT_ERRORS as exc:
                await self._drop(exc)
                raise StoreUnavailable(
                    f"analytics claim connection failed: {exc!r}. Required action: check "
                    "that PostgreSQL is reachable; the next interval retries") from exc
        return got

    async def release_key(self, key: int) -> None:
        """Release every interval lock this session holds for ``key``."""
        async with self._lock:
            held = self._held.pop(key, set())
            conn = self._conn
            if not held or conn is None or conn.is_closed():
                return
            try:
                for n in held:
                    await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", key, n)
            except TRANSIENT_ERRORS as exc:
                await self._drop(exc)

    async def _drop(self, exc: BaseException) -> None:
        _CLAIM_ERRORS.inc()
        _log.error("analytics_claim_failed", error=repr(exc),
                   action="check PostgreSQL; claims resume on the next interval")
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Close the dedicated connection (releases every lock)."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self._store.command_timeout)
            except TRANSIENT_ERRORS:
                conn.terminate()
