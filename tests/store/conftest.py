"""Fixtures of the store tests (real PostgreSQL; see pgutil for the helpers).

* ``pg_dsn`` (session): a fresh, migrated database, dropped at the end.
* ``fresh_dsn`` (function): a fresh, migrated database of its own.
* ``empty_dsn`` (function): a fresh database without any table.
* ``store`` (function): an open Store on ``pg_dsn``.
* ``pg_instance`` (session): a private PostgreSQL server the test may stop and restart.

Other test packages can copy these or import the helpers:
``from tests.store.pgutil import TempDatabase, PgInstance, make_store``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from rtserver.store import Store
from tests.store.pgutil import PgInstance, TempDatabase, create_database, drop_database, make_store


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A migrated database shared by the session's tests (isolate data by random ids)."""
    with TempDatabase(migrated=True) as dsn:
        yield dsn


@pytest.fixture
def fresh_dsn() -> Iterator[str]:
    """A migrated database for one test (for tests that count every row)."""
    with TempDatabase(migrated=True) as dsn:
        yield dsn


@pytest.fixture
def empty_dsn() -> Iterator[str]:
    """An empty database for one test."""
    dsn = asyncio.run(create_database())
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(dsn))


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[Store]:
    """An open Store on the session database."""
    s = make_store(pg_dsn)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def pg_instance() -> Iterator[PgInstance]:
    """A private PostgreSQL server (started; tests may stop it and must restart it)."""
    instance = PgInstance()
    instance.start()
    try:
        yield instance
    finally:
        instance.destroy()
