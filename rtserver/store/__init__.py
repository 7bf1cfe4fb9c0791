"""PostgreSQL store: migrations, typed queries, batched connection records, backend ingress.

Entry points (see docs/store.md):

* :func:`apply_migrations` / :func:`check_schema` / :func:`latest_version` -- schema.
* :class:`Store` -- the asyncpg pool and typed queries.
* :class:`ConnectionRecorder` -- connection records off the hot path.
* :class:`IngressListener` / :func:`send_ingress` / :func:`send_user_notification` --
  backend ingress over ``LISTEN/NOTIFY``.
"""

from __future__ import annotations

from rtserver.store.ingress import (
    NOTIFY_PAYLOAD_MAX,
    AlertEvent,
    AnalyticsEvent,
    CalculationProgress,
    IngressHandler,
    IngressInvalid,
    IngressListener,
    IngressPayload,
    IngressPayloadTooLarge,
    QuoteUpdate,
    RoomPublish,
    UserNotify,
    decode_ingress,
    encode_ingress,
    send_ingress,
    send_user_notification,
)
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
    "NOTIFY_PAYLOAD_MAX",
    "AdminActivity",
    "AdminUser",
    "AlertEvent",
    "AlertResolution",
    "AnalyticsEvent",
    "CalculationProgress",
    "CloseReport",
    "ConnectionRecord",
    "ConnectionRecorder",
    "ConversionFunnel",
    "Customer",
    "Dashboard",
    "IngressHandler",
    "IngressInvalid",
    "IngressListener",
    "IngressPayload",
    "IngressPayloadTooLarge",
    "MigrationError",
    "Notification",
    "NotificationPage",
    "PoolState",
    "Quote",
    "QuoteNotFound",
    "QuoteUpdate",
    "QuotesDashboard",
    "RoomPublish",
    "SchemaAhead",
    "SchemaBehind",
    "SchemaError",
    "Store",
    "StoreUnavailable",
    "SystemAlert",
    "UpdateApplied",
    "UpdateConflict",
    "UpdateResult",
    "UserNotify",
    "apply_migrations",
    "check_schema",
    "decode_ingress",
    "decode_json",
    "encode_ingress",
    "latest_version",
    "send_ingress",
    "send_user_notification",
]
