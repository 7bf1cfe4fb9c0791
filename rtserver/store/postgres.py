"""The PostgreSQL store: one asyncpg pool and typed queries for every domain.

Domain handlers call :class:`Store`'s methods instead of writing SQL. The
pool, its bounds and its errors live in :mod:`rtserver.store.pool`; the
queries live in one module per group of tables (:mod:`~rtserver.store.connections`,
:mod:`~rtserver.store.notifications`, :mod:`~rtserver.store.quotes`,
:mod:`~rtserver.store.analytics`, :mod:`~rtserver.store.admin`,
:mod:`~rtserver.store.alerts`, :mod:`~rtserver.store.login_links`) and :class:`Store`
combines them.

Every method acquires a connection with the configured
``pool_acquire_timeout``; every query runs under the configured
``command_timeout`` (client side) and ``statement_timeout`` (server side).
When the database cannot be reached, or a bound is hit, the method raises
:class:`StoreUnavailable` (message says what happened and what to do), logs
``store_unavailable`` and counts ``rtserver_store_errors_total{op}``. Errors
of the data itself (a constraint violated, a malformed value) are raised as
the asyncpg exception.

JSON values (notification data, dashboard configurations, alert details) go
in as already-encoded JSON (``bytes`` or :class:`msgspec.Raw`) or as any value
:func:`msgspec.json.encode` accepts, and come back as :class:`msgspec.Raw`.
"""

from __future__ import annotations

from rtserver.store.admin import AdminQueries
from rtserver.store.alerts import ALERT_SEVERITIES, AlertQueries
from rtserver.store.analytics import AnalyticsQueries
from rtserver.store.connections import ConnectionQueries
from rtserver.store.login_links import LoginLinkQueries
from rtserver.store.notifications import NotificationQueries
from rtserver.store.pool import TRANSIENT_ERRORS, StoreUnavailable, encode_json
from rtserver.store.quotes import QuoteQueries

__all__ = [
    "ALERT_SEVERITIES",
    "TRANSIENT_ERRORS",
    "Store",
    "StoreUnavailable",
    "encode_json",
]


class Store(
    ConnectionQueries,
    NotificationQueries,
    QuoteQueries,
    AnalyticsQueries,
    AdminQueries,
    AlertQueries,
    LoginLinkQueries,
):
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
