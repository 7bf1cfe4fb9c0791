"""Migrations: from empty, idempotent, concurrent, and the schema check."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from rtserver.store import SchemaAhead, SchemaBehind, check_schema, latest_version
from rtserver.store.migrations import load_migrations
from tests.store.pgutil import make_store, migrate

pytestmark = pytest.mark.timeout(60)

TABLES = {
    "customers", "admin_users", "admin_activity_logs", "admin_dashboards", "system_alerts",
    "websocket_connections", "quotes", "notifications", "schema_migrations",
}


async def test_files_are_versioned() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert latest_version() == migrations[-1].version >= 1


async def test_from_empty_then_idempotent(empty_dsn: str) -> None:
    applied = await migrate(empty_dsn)
    assert applied == list(range(1, latest_version() + 1))
    conn = await asyncpg.connect(empty_dsn)
    try:
        names = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert names >= TABLES
        history = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations")
        assert [r["version"] for r in history] == applied
        assert all(r["applied_at"] is not None for r in history)
        assert await check_schema(conn) == latest_version()
        inet_type = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'websocket_connections' AND column_name = 'ip_address'")
        assert inet_type == "inet"
        before = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert await migrate(empty_dsn) == []
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == before
    finally:
        await conn.close()


async def test_concurrent_migrate_applies_once(empty_dsn: str) -> None:
    results = await asyncio.gather(migrate(empty_dsn), migrate(empty_dsn), migrate(empty_dsn))
    applied = sorted(v for r in results for v in r)
    assert applied == list(range(1, latest_version() + 1))


async def test_check_schema_refuses_empty_and_old(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(SchemaBehind) as info:
            await check_schema(conn)
        assert info.value.current == 0
        assert f"this rtserver needs {latest_version()}" in str(info.value)
        assert "rtserver migrate --database" in str(info.value)
    finally:
        await conn.close()
    await migrate(empty_dsn)
    conn = await asyncpg.connect(empty_dsn)
    try:
        # Pretend the database is one version behind.
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", latest_version())
        with pytest.raises(SchemaBehind) as info:
            await check_schema(conn)
        message = str(info.value)
        assert message.startswith(
            f"database schema is at version {latest_version() - 1}, "
            f"this rtserver needs {latest_version()}. Required action: run `rtserver migrate"
        )
        # And ahead of the code.
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'future'), ($2, 'x')",
            latest_version(), latest_version() + 1)
        with pytest.raises(SchemaAhead):
            await check_schema(conn)
    finally:
        await conn.close()


async def test_store_check_schema(pg_dsn: str, empty_dsn: str) -> None:
    good = make_store(pg_dsn)
    await good.open()
    try:
        assert await good.check_schema() == latest_version()
    finally:
        await good.close()
    old = make_store(empty_dsn)
    await old.open()
    try:
        with pytest.raises(SchemaBehind):
            await old.check_schema()
    finally:
        await old.close()
