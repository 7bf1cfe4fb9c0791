"""Typed rows and results returned by :class:`rtserver.store.Store`.

Every JSONB column comes back as :class:`msgspec.Raw` (the JSON text as
stored): encoding one of these Structs with :mod:`msgspec.json` embeds it
without decoding and re-encoding it. Use :func:`decode_json` to read it.
Timestamps are timezone-aware UTC :class:`datetime.datetime` values.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "AdminActivity",
    "AdminUser",
    "AlertResolution",
    "AlertSeverity",
    "ConnectionRecord",
    "ConnectionRow",
    "ConversionFunnel",
    "Customer",
    "Dashboard",
    "HourBucket",
    "Notification",
    "NotificationPage",
    "PoolState",
    "Quote",
    "QuoteNotFound",
    "QuotesDashboard",
    "StateCount",
    "StatusCount",
    "SystemAlert",
    "UpdateApplied",
    "UpdateConflict",
    "UpdateResult",
    "decode_json",
]

AlertSeverity = Literal["low", "medium", "high", "critical"]
"""Severity of a :class:`SystemAlert` (a CHECK constraint in the table)."""


def decode_json(raw: msgspec.Raw) -> Any:
    """Decode a JSONB value returned by the store."""
    return msgspec.json.decode(raw)


class PoolState(msgspec.Struct, frozen=True):
    """The connection pool as shown in admin metrics."""

    size: int
    idle: int
    in_use: int
    min_size: int
    max_size: int


class ConnectionRow(msgspec.Struct):
    """One pending upsert of ``websocket_connections`` (merged recorder events).

    ``None`` means "no new value": the upsert keeps what the row has.
    """

    connection_id: str
    worker: int
    user_id: str | None = None
    admin_user_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    last_activity: datetime | None = None
    close_code: int | None = None
    close_reason: str | None = None
    #: JSON of the state transitions (``[{"state", "at", "reason", "close_code"}]``, jsonb).
    state_history: bytes | None = None


class ConnectionRecord(msgspec.Struct, frozen=True):
    """A stored ``websocket_connections`` row."""

    connection_id: str
    worker: int
    user_id: str | None
    admin_user_id: str | None
    ip_address: str | None
    user_agent: str | None
    connected_at: datetime | None
    disconnected_at: datetime | None
    last_activity: datetime | None
    close_code: int | None
    close_reason: str | None


class Notification(msgspec.Struct, frozen=True):
    """A stored push notification."""

    id: int
    user_id: str
    title: str
    body: str
    data: msgspec.Raw
    created_at: datetime
    delivered_at: datetime | None
    read_at: datetime | None


class NotificationPage(msgspec.Struct, frozen=True):
    """One page of a user's notifications, newest first.

    ``next_before_id`` is the ``before_id`` for the next page, ``None`` on the
    last page.
    """

    items: list[Notification]
    next_before_id: int | None


class Customer(msgspec.Struct, frozen=True):
    """A stored customer."""

    id: uuid.UUID
    email: str | None
    name: str | None
    state: str | None
    created_at: datetime


class Quote(msgspec.Struct, frozen=True):
    """A stored quote; ``version`` increases by one on every change."""

    id: uuid.UUID
    customer_id: uuid.UUID | None
    state: str | None
    status: str
    total_premium: float | None
    fields: msgspec.Raw
    version: int
    created_at: datetime
    updated_at: datetime
    updated_by: str | None
    converted_at: datetime | None


class UpdateApplied(msgspec.Struct, frozen=True, tag="applied"):
    """The field was written; the quote is now at ``version``."""

    version: int


class UpdateConflict(msgspec.Struct, frozen=True, tag="conflict"):
    """``base_version`` was not the current version: nothing was written.

    ``current_value`` is the field's current JSON value (``None`` when the
    field is not set); ``current_version`` the quote's current version.
    """

    current_value: msgspec.Raw | None
    current_version: int


class QuoteNotFound(msgspec.Struct, frozen=True, tag="not_found"):
    """No quote has this id."""

    quote_id: uuid.UUID


UpdateResult = UpdateApplied | UpdateConflict | QuoteNotFound
"""Outcome of :meth:`rtserver.store.Store.update_field`."""


class StatusCount(msgspec.Struct, frozen=True):
    """Number of quotes with one status."""

    status: str
    count: int


class StateCount(msgspec.Struct, frozen=True):
    """Number of quotes in one (US) state."""

    state: str
    count: int


class HourBucket(msgspec.Struct, frozen=True):
    """Quotes created in the hour starting at ``hour`` (UTC)."""

    hour: datetime
    count: int
    premium_total: float


class QuotesDashboard(msgspec.Struct, frozen=True):
    """Aggregates of the quotes created in the last ``hours`` hours.

    ``timeline`` has one bucket per hour (empty hours included), oldest
    first; ``top_states`` is ordered by count then state.
    """

    hours: int
    state_filter: str | None
    total_quotes: int
    unique_customers: int
    average_premium: float | None
    by_status: list[StatusCount]
    timeline: list[HourBucket]
    top_states: list[StateCount]
    computed_at: datetime


class ConversionFunnel(msgspec.Struct, frozen=True):
    """Conversion of the quotes created in the last ``hours`` hours.

    Stages: ``created`` (every quote), ``priced`` (``total_premium`` set),
    ``converted`` (status ``converted``). Rates are ``None`` when the
    denominator is zero.
    """

    hours: int
    created: int
    priced: int
    converted: int
    priced_rate: float | None
    conversion_rate: float | None
    average_hours_to_convert: float | None
    computed_at: datetime


class AdminUser(msgspec.Struct, frozen=True):
    """A stored admin user."""

    id: str
    email: str
    name: str | None
    permissions: list[str]
    is_active: bool
    created_at: datetime


class AdminActivity(msgspec.Struct, frozen=True):
    """A stored ``admin_activity_logs`` row."""

    id: int
    admin_user_id: str
    action: str
    resource_type: str | None
    resource_id: str | None
    status: str
    details: msgspec.Raw
    ip_address: str | None
    user_agent: str | None
    created_at: datetime


class Dashboard(msgspec.Struct, frozen=True):
    """A saved admin dashboard."""

    id: int
    admin_user_id: str
    dashboard_name: str
    configuration: msgspec.Raw
    is_default: bool
    created_at: datetime
    updated_at: datetime


class SystemAlert(msgspec.Struct, frozen=True):
    """A stored system alert."""

    id: int
    alert_type: str
    severity: str
    message: str
    details: msgspec.Raw
    resolved: bool
    resolved_at: datetime | None
    resolved_by: str | None
    created_at: datetime


class AlertResolution(msgspec.Struct, frozen=True):
    """Outcome of :meth:`rtserver.store.Store.resolve_alert`.

    ``outcome`` is ``resolved`` (this call resolved it), ``already_resolved``
    (``alert`` shows who did) or ``not_found`` (``alert`` is ``None``).
    """

    outcome: Literal["resolved", "already_resolved", "not_found"]
    alert: SystemAlert | None
