"""The asyncpg pool under :class:`rtserver.store.Store`, its errors and its JSON codec.

:class:`StorePool` owns the pool: it validates the ``[database]`` settings,
opens and closes the pool and hands out connections through :meth:`acquire`,
which turns every transient failure into :class:`StoreUnavailable` (logged as
``store_unavailable``, counted in ``rtserver_store_errors_total{op}``). The
typed queries (one module per group of tables) build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import cast

import asyncpg
import msgspec

from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store import migrations
from rtserver.store.models import PoolState

__all__ = ["TRANSIENT_ERRORS", "StorePool", "StoreUnavailable", "check_ip", "encode_json"]

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


def check_ip(ip_address: str | None) -> str | None:
    """Return ``ip_address`` if it is an IP address or ``None``; raise ValueError otherwise."""
    if ip_address is not None:
        try:
            ipaddress.ip_address(ip_address)
        except ValueError as exc:
            raise ValueError(
                f"ip_address {ip_address!r} is not an IP address. Required action: pass the "
                "peer's IP address (or None when there is none)"
            ) from exc
    return ip_address


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


class StorePool:
    """One asyncpg pool with the configured bounds (the base of :class:`Store`).

    The arguments are described on :class:`rtserver.store.Store`.
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
