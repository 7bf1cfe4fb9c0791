"""Versioned SQL migrations of the rtserver schema.

Migrations are the files ``rtserver/store/migrations/NNNN_name.sql`` (shipped as
package data), applied in version order, each inside its own transaction and
recorded in ``schema_migrations(version, name, applied_at)``.
:func:`apply_migrations` is idempotent (applied versions are skipped) and safe
to run concurrently: it holds a PostgreSQL advisory lock
(:data:`MIGRATION_LOCK_KEY`) while it works, so a second ``rtserver migrate``
waits (bounded by ``lock_timeout``) and then finds nothing left to do.

A server checks the schema at start with :func:`check_schema` and refuses to
run against a schema that is behind (:class:`SchemaBehind`) or ahead of the
code (:class:`SchemaAhead`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from rtserver.jsonlog import get_logger

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationError",
    "Progress",
    "SchemaAhead",
    "SchemaBehind",
    "SchemaError",
    "apply_migrations",
    "apply_migrations_on",
    "check_schema",
    "latest_version",
    "load_migrations",
    "schema_version",
]

MIGRATION_LOCK_KEY = 0x72747376_6D696772 & 0x7FFFFFFFFFFFFFFF
"""``pg_advisory_lock`` key held while migrations run ("rtsvmigr")."""

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_log = get_logger("rtserver.store.migrations")

#: Called with ``(version, name)`` before a migration is applied.
Progress = Callable[[int, str], None]


class SchemaError(RuntimeError):
    """The database schema does not match what this rtserver needs."""


class SchemaBehind(SchemaError):
    """The database schema is older than this rtserver (migrations pending)."""

    def __init__(self, current: int, required: int) -> None:
        self.current = current
        self.required = required
        super().__init__(
            f"database schema is at version {current}, this rtserver needs {required}. "
            "Required action: run `rtserver migrate --database DSN` "
            "(with the DSN this server uses), then start the server again"
        )


class SchemaAhead(SchemaError):
    """The database schema is newer than this rtserver knows."""

    def __init__(self, current: int, required: int) -> None:
        self.current = current
        self.required = required
        super().__init__(
            f"database schema is at version {current}, newer than the version {required} "
            "this rtserver knows. Required action: run the rtserver release that migrated "
            "this database (or a newer one)"
        )


class MigrationError(RuntimeError):
    """The migration files or the migration history are inconsistent."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with this package, in version order.

    Raises :class:`MigrationError` when versions are not 1, 2, 3, ... without
    gaps or duplicates.
    """
    folder = resources.files(__package__ or "rtserver.store").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_name.sql. "
                "Required action: rename it (four-digit version, lower-case name)"
            )
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"migration versions must be 1..N without gaps or duplicates, found {versions}. "
            "Required action: fix the file names in rtserver/store/migrations/"
        )
    return found


def latest_version() -> int:
    """The schema version this rtserver needs (the highest migration shipped)."""
    migrations = load_migrations()
    return migrations[-1].version if migrations else 0


_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def _applied_versions(conn: asyncpg.Connection) -> set[int] | None:
    """Applied versions, or None when ``schema_migrations`` does not exist."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    rows = await conn.fetch("SELECT version FROM schema_migrations")
    return {int(r["version"]) for r in rows}


async def apply_migrations_on(conn: asyncpg.Connection, *, lock_timeout: float,
                              progress: Progress | None = None) -> list[int]:
    """Apply every pending migration on an open connection; return the versions applied.

    ``progress(version, name)`` is called (and ``migration_applying`` logged)
    before each migration is applied.

    ``lock_timeout`` (seconds) bounds the wait for the migration advisory lock
    and for table locks taken by the migration statements; no statement
    timeout applies to migrations (they may legitimately run long).
    """
    migrations = load_migrations()
    await conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    await conn.execute("SET statement_timeout = 0")
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_HISTORY)
        applied = await _applied_versions(conn) or set()
        known = {m.version for m in migrations}
        unknown = sorted(applied - known)
        if unknown:
            raise SchemaAhead(max(unknown), latest_version())
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            _log.info("migration_applying", version=migration.version, name=migration.name)
            if progress is not None:
                progress(migration.version, migration.name)
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
            _log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def apply_migrations(dsn: str, *, connect_timeout: float, lock_timeout: float,
                           progress: Progress | None = None) -> list[int]:
    """Connect to ``dsn`` and apply every pending migration; return the versions applied.

    Running it again applies nothing and returns ``[]``. ``connect_timeout``
    bounds the connection attempt, ``lock_timeout`` the waits for locks (see
    :func:`apply_migrations_on`).
    """
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        done = await apply_migrations_on(conn, lock_timeout=lock_timeout, progress=progress)
    finally:
        await conn.close()
    _log.info("migrations_done", applied=done, schema_version=latest_version())
    return done


async def schema_version(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The highest applied migration version (0 for an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(value)


async def check_schema(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Verify the database schema is exactly the version this rtserver needs.

    Returns the version. Raises :class:`SchemaBehind` when migrations are
    pending (the message names the command to run) and :class:`SchemaAhead`
    when the database was migrated by a newer rtserver.
    """
    required = latest_version()
    current = await schema_version(conn)
    if current < required:
        raise SchemaBehind(current, required)
    if current > required:
        raise SchemaAhead(current, required)
    count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    if int(count) != required:
        raise MigrationError(
            f"schema_migrations records {count} migrations for version {current}, expected "
            f"{required}: the migration history has gaps. Required action: inspect "
            "schema_migrations and re-run `rtserver migrate --database DSN`"
        )
    return current
