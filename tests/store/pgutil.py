"""PostgreSQL helpers for tests (importable: ``from tests.store import pgutil``).

* :func:`create_database` / :func:`drop_database` -- a fresh, randomly named
  database on the shared server (``RTSERVER_TEST_PG_ADMIN_DSN``, by default
  ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards.
* :class:`TempDatabase` -- the same as a synchronous context manager,
  optionally migrated (for session fixtures).
* :class:`PgInstance` -- a private PostgreSQL server (initdb + pg_ctl on a free
  loopback port in a temp dir, run as the ``postgres`` OS user when the tests
  run as root) that a test may stop and restart without disturbing anything else.
* :func:`make_store` -- a :class:`~rtserver.store.Store` with small test settings.
* Raw-SQL rows for tests (the server never needs these, so the Store has no
  method for them): :func:`insert_customer`, :func:`insert_quote`,
  :func:`set_quote_status`, :func:`create_admin_user`, :func:`get_admin_user`,
  :func:`delete_dashboard`, :func:`get_alert`, :func:`list_alerts`,
  :func:`get_connection`, :func:`count_connections`, :func:`pending_notifications`.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from rtserver.store import (
    AdminUser,
    ConnectionRecord,
    Customer,
    Notification,
    Quote,
    Store,
    SystemAlert,
    apply_migrations,
)
from rtserver.store.alerts import ALERT_COLS
from rtserver.store.pool import encode_json
from rtserver.store.quotes import QUOTE_COLS

__all__ = [
    "ADMIN_DSN",
    "PgInstance",
    "TempDatabase",
    "count_connections",
    "create_admin_user",
    "create_database",
    "delete_dashboard",
    "drop_database",
    "dsn_for",
    "free_port",
    "get_admin_user",
    "get_alert",
    "get_connection",
    "insert_customer",
    "insert_quote",
    "list_alerts",
    "make_store",
    "migrate",
    "pending_notifications",
    "set_quote_status",
    "wait_until",
]

ADMIN_DSN = os.environ.get(
    "RTSERVER_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""DSN of a database on the shared test server from which test databases are created."""

CONNECT_TIMEOUT = 10.0
LOCK_TIMEOUT = 10.0


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """``admin_dsn`` with its database replaced by ``dbname``."""
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{dbname}"


async def create_database(admin_dsn: str = ADMIN_DSN, prefix: str = "rtstest") -> str:
    """Create an empty, randomly named database; return its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
    finally:
        await conn.close()
    return dsn_for(admin_dsn, name)


async def drop_database(dsn: str, admin_dsn: str = ADMIN_DSN) -> None:
    """Drop the database of ``dsn`` (disconnecting any session still on it)."""
    name = dsn.rpartition("/")[2]
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrate(dsn: str) -> list[int]:
    """Apply every migration to ``dsn``."""
    return await apply_migrations(dsn, connect_timeout=CONNECT_TIMEOUT, lock_timeout=LOCK_TIMEOUT)


class TempDatabase:
    """A fresh database for the duration of a ``with`` block (synchronous, for fixtures)."""

    def __init__(self, *, migrated: bool, admin_dsn: str = ADMIN_DSN) -> None:
        self.admin_dsn = admin_dsn
        self.migrated = migrated
        self.dsn = ""

    def __enter__(self) -> str:
        async def setup() -> str:
            dsn = await create_database(self.admin_dsn)
            if self.migrated:
                await migrate(dsn)
            return dsn

        self.dsn = asyncio.run(setup())
        return self.dsn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run(drop_database(self.dsn, self.admin_dsn))


def make_store(dsn: str, **overrides: Any) -> Store:
    """A Store with small, explicit test settings (override any keyword)."""
    settings: dict[str, Any] = {
        "dsn": dsn,
        "pool_min_size": 1,
        "pool_max_size": 4,
        "pool_acquire_timeout": 5.0,
        "pool_max_inactive_lifetime": 60.0,
        "connect_timeout": 5.0,
        "statement_timeout": 10.0,
        "command_timeout": 10.0,
        "application_name": "rtserver-tests",
    }
    settings.update(overrides)
    return Store(**settings)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError(
            "pg_ctl not found. Required action: install the PostgreSQL server binaries "
            "(apt-get install postgresql)"
        )
    return Path(pg_ctl).parent


class PgInstance:
    """A private PostgreSQL server in a temp dir on a free loopback port.

    ``start()`` runs initdb the first time; ``stop()`` stops it (fast mode:
    clients are disconnected); ``start()`` again restarts it on the same port
    with the same data. ``destroy()`` stops it and removes the directory.
    """

    def __init__(self, timeout: float = 60.0) -> None:
        self.bindir = _pg_bindir()
        self.timeout = timeout
        self.root = Path(tempfile.mkdtemp(prefix="rtserver-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.running = False
        self._initialized = False
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def admin_dsn(self) -> str:
        """DSN of the instance's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                                check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )

    def start(self) -> None:
        """Initialize (first time) and start the server; wait until it accepts connections."""
        if not self._initialized:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8")
            self._initialized = True
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40 "
            "-c shared_buffers=16MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(int(self.timeout)), "start")
        self.running = True

    def stop(self) -> None:
        """Stop the server (clients are disconnected)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                  "-t", str(int(self.timeout)), "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if running and delete its directory."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------ raw-SQL rows for tests

_CONNECTION_COLS = (
    "connection_id, worker, user_id, admin_user_id, host(ip_address) AS ip_address, user_agent, "
    "connected_at, disconnected_at, last_activity, close_code, close_reason"
)
_NOTIFICATION_COLS = "id, user_id, title, body, data, created_at, delivered_at, read_at"


async def get_connection(store: Store, connection_id: str) -> ConnectionRecord | None:
    """The stored ``websocket_connections`` row of one connection."""
    async with store.acquire("test_get_connection") as conn:
        rec = await conn.fetchrow(
            f"SELECT {_CONNECTION_COLS} FROM websocket_connections WHERE connection_id = $1",
            connection_id,
        )
    return None if rec is None else ConnectionRecord(**dict(rec))


async def count_connections(store: Store, prefix: str) -> int:
    """How many ``websocket_connections`` rows have an id starting with ``prefix``."""
    async with store.acquire("test_count_connections") as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM websocket_connections WHERE starts_with(connection_id, $1)",
            prefix,
        )
    return int(n)


async def pending_notifications(store: Store, user_id: str, limit: int) -> list[Notification]:
    """Up to ``limit`` undelivered notifications of ``user_id``, oldest first (id order)."""
    async with store.acquire("test_pending_notifications") as conn:
        rows = await conn.fetch(
            f"SELECT {_NOTIFICATION_COLS} FROM notifications "
            "WHERE user_id = $1 AND delivered_at IS NULL ORDER BY id LIMIT $2",
            user_id, limit,
        )
    return [Notification(**dict(r)) for r in rows]


async def insert_customer(
    store: Store, *, email: str | None, name: str | None, state: str | None
) -> Customer:
    """Create a customer."""
    async with store.acquire("test_insert_customer") as conn:
        rec = await conn.fetchrow(
            "INSERT INTO customers (email, name, state) VALUES ($1, $2, $3) "
            "RETURNING id, email, name, state, created_at",
            email, name, state,
        )
    assert rec is not None
    return Customer(**dict(rec))


async def insert_quote(
    store: Store,
    *,
    customer_id: uuid.UUID | None,
    state: str | None,
    status: str,
    total_premium: float | None,
    fields: object,
    created_at: datetime | None,
) -> Quote:
    """Create a quote at version 1 (``created_at`` ``None`` means now)."""
    async with store.acquire("test_insert_quote") as conn:
        rec = await conn.fetchrow(
            "INSERT INTO quotes (customer_id, state, status, total_premium, fields, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), "
            f"coalesce($6, now())) RETURNING {QUOTE_COLS}",
            customer_id, state, status, total_premium, encode_json(fields), created_at,
        )
    assert rec is not None
    return Quote(**dict(rec))


async def set_quote_status(
    store: Store,
    quote_id: uuid.UUID,
    status: str,
    *,
    total_premium: float | None,
    set_premium: bool,
    updated_by: str,
) -> Quote | None:
    """Change a quote's status (and premium when ``set_premium``); version + 1.

    Status ``converted`` stamps ``converted_at`` (once), as the quote service does.
    """
    async with store.acquire("test_set_quote_status") as conn:
        rec = await conn.fetchrow(
            "UPDATE quotes SET status = $2, "
            "total_premium = CASE WHEN $3::boolean THEN $4::numeric ELSE total_premium END, "
            "converted_at = CASE WHEN $2 = 'converted' THEN coalesce(converted_at, now()) "
            "ELSE converted_at END, "
            "version = version + 1, updated_at = now(), updated_by = $5 "
            f"WHERE id = $1 RETURNING {QUOTE_COLS}",
            quote_id, status, set_premium, total_premium, updated_by,
        )
    return None if rec is None else Quote(**dict(rec))


async def create_admin_user(
    store: Store, *, email: str, name: str | None, permissions: Sequence[str]
) -> AdminUser:
    """Create an admin user."""
    async with store.acquire("test_create_admin_user") as conn:
        rec = await conn.fetchrow(
            "INSERT INTO admin_users (email, name, permissions) VALUES ($1, $2, $3) "
            "RETURNING id, email, name, permissions, is_active, created_at",
            email, name, list(permissions),
        )
    assert rec is not None
    return AdminUser(**dict(rec))


async def get_admin_user(store: Store, admin_user_id: str) -> AdminUser | None:
    """One admin user."""
    async with store.acquire("test_get_admin_user") as conn:
        rec = await conn.fetchrow(
            "SELECT id, email, name, permissions, is_active, created_at "
            "FROM admin_users WHERE id = $1",
            admin_user_id,
        )
    return None if rec is None else AdminUser(**dict(rec))


async def delete_dashboard(store: Store, admin_user_id: str, dashboard_name: str) -> bool:
    """Delete one saved dashboard; ``False`` when it did not exist."""
    async with store.acquire("test_delete_dashboard") as conn:
        status = await conn.execute(
            "DELETE FROM admin_dashboards WHERE admin_user_id = $1 AND dashboard_name = $2",
            admin_user_id, dashboard_name,
        )
    return bool(status != "DELETE 0")


async def get_alert(store: Store, alert_id: int) -> SystemAlert | None:
    """One alert."""
    async with store.acquire("test_get_alert") as conn:
        rec = await conn.fetchrow(f"SELECT {ALERT_COLS} FROM system_alerts WHERE id = $1",
                                  alert_id)
    return None if rec is None else SystemAlert(**dict(rec))


async def list_alerts(
    store: Store, *, resolved: bool | None, severity: str | None, before_id: int | None,
    limit: int,
) -> list[SystemAlert]:
    """Alerts newest first, filtered by ``resolved`` / ``severity`` (``None`` = any)."""
    async with store.acquire("test_list_alerts") as conn:
        rows = await conn.fetch(
            f"SELECT {ALERT_COLS} FROM system_alerts "
            "WHERE ($1::bool IS NULL OR resolved = $1) "
            "AND ($2::text IS NULL OR severity = $2) "
            "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
            resolved, severity, before_id, limit,
        )
    return [SystemAlert(**dict(r)) for r in rows]
