"""Checks run once before ``rtserver serve`` starts anything: the external services.

With ``database.dsn`` set, PostgreSQL must answer within
``database.connect_timeout`` and hold exactly the schema version this
rtserver needs; with ``bus.redis_url`` set, Redis must answer a PING within
``bus.connect_timeout``. Each failure is a :class:`~rtserver.startup.StartupError`
with its own exit status. After start, the same outages degrade the server
(``/healthz`` 503, error frames) instead of stopping it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtserver.config import Config, mask_value
from rtserver.startup import EXIT_DATABASE, EXIT_REDIS, EXIT_SCHEMA, StartupError
from rtserver.store.migrations import MigrationError, SchemaError, check_schema

__all__ = ["check_services"]


async def _check_database(dsn: str, timeout: float) -> None:
    shown = mask_value("database.dsn", dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError,
            asyncpg.InterfaceError) as exc:
        raise StartupError(
            EXIT_DATABASE, f"PostgreSQL at {shown} is unreachable ({type(exc).__name__}: {exc})",
            "start PostgreSQL or fix database.dsn (--database / RTSERVER_DATABASE); "
            "leave it empty to run without database features") from exc
    try:
        await check_schema(conn)
    except (SchemaError, MigrationError) as exc:
        text = str(exc)
        problem, _, action = text.partition(". Required action: ")
        raise StartupError(EXIT_SCHEMA, f"{problem} ({shown})",
                           action or "run `rtserver migrate --database DSN`") from exc
    finally:
        await conn.close()


async def _check_redis(url: str, timeout: float) -> None:
    shown = mask_value("bus.redis_url", url)
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise StartupError(
            EXIT_REDIS, f"Redis at {shown} is unreachable ({type(exc).__name__}: {exc})",
            "start Redis or fix bus.redis_url (--redis / RTSERVER_REDIS); leave it empty "
            "for the embedded bus (one machine)") from exc
    finally:
        await client.aclose()


async def _check(config: Config) -> None:
    if config.database.dsn:
        await _check_database(config.database.dsn, config.database.connect_timeout)
    if config.bus.redis_url:
        await _check_redis(config.bus.redis_url, config.bus.connect_timeout)


def check_services(config: Config) -> None:
    """Verify the configured PostgreSQL and Redis; raise :class:`StartupError` if not usable."""
    asyncio.run(_check(config))
