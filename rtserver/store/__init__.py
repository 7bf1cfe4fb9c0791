"""PostgreSQL store: migrations, typed queries, batched connection records, backend ingress.

Entry points (see docs/store.md):

* :func:`apply_migrations` / :func:`check_schema` / :func:`latest_version` -- schema.
* :class:`Store` -- the asyncpg pool and typed queries.
* :class:`ConnectionRecorder` -- connection records off the hot path.

Backend ingress (``LISTEN/NOTIFY``, the Redis list) is :mod:`rtserver.ingress`.
"""

from __future__ import annotations

from rtserver.store.migrations import (
    MigrationError,
    SchemaAhead,
    SchemaBehind,
    SchemaError,
    apply_migrations,
    check_schema,
    latest_version,
)
from rtserver.store.models import (
    AdminActivity,
    AdminUser,
    AlertResolution,
    ConnectionRecord,
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
    decode_json,
)
from rtserver.store.postgres import ALERT_SEVERITIES, Store, StoreUnavailable
from rtserver.store.recorder import CloseReport, ConnectionRecorder

__all__ = [
    "ALERT_SEVERITIES",
    "AdminActivity",
    "AdminUser",
    "AlertResolution",
    "CloseReport",
    "ConnectionRecord",
    "ConnectionRecorder",
    "ConversionFunnel",
    "Customer",
    "Dashboard",
    "MigrationError",
    "Notification",
    "NotificationPage",
    "PoolState",
    "Quote",
    "QuoteNotFound",
    "QuotesDashboard",
    "SchemaAhead",
    "SchemaBehind",
    "SchemaError",
    "Store",
    "StoreUnavailable",
    "SystemAlert",
    "UpdateApplied",
    "UpdateConflict",
    "UpdateResult",
    "apply_migrations",
    "check_schema",
    "decode_json",
    "latest_version",
]
