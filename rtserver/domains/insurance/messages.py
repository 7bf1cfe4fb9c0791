"""Wire messages of the domain channels (quotes, analytics, admin, alerts).

Client messages subclass :class:`~rtserver.protocol.messages.ClientMessage`
(unknown fields rejected); server messages subclass
:class:`~rtserver.protocol.messages.ServerMessage`. docs/domain.md has the
tables. Several server messages reuse a core tag with extra fields: ``ack``
(an accepted ``quote_edit``: the core ack's ``room``/``seq`` plus the quote
fields) and ``error`` (the core error plus ``field`` or the conflict data).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec

from rtserver.protocol.messages import ClientMessage, MessageId, ServerMessage
from rtserver.store.models import (
    AdminActivity,
    ConversionFunnel,
    Dashboard,
    PoolState,
    Quote,
    QuotesDashboard,
    SystemAlert,
)

__all__ = [
    "ActivityFilters",
    "AdminAlert",
    "AlertResolved",
    "AlertsList",
    "AlertsReply",
    "AnalyticsError",
    "AnalyticsEventOut",
    "AnalyticsStarted",
    "AnalyticsStopped",
    "AnalyticsUpdate",
    "BusState",
    "CalculationProgressOut",
    "ConflictError",
    "ConversionFilters",
    "DashboardList",
    "DashboardSave",
    "DashboardSaved",
    "DashboardsReply",
    "DatabaseState",
    "DomainError",
    "EditAck",
    "FieldBlur",
    "FieldBlurred",
    "FieldFocus",
    "FieldFocused",
    "FieldUpdate",
    "Latency",
    "PerformanceFilters",
    "PerformanceMetrics",
    "PerformanceSnapshot",
    "QuoteEdit",
    "QuoteState",
    "QuoteSubscribe",
    "QuoteUpdateOut",
    "QuotesFilters",
    "Rates",
    "ResolveAlert",
    "StartAnalytics",
    "StartMonitoring",
    "StartPerformance",
    "StartUserActivity",
    "StopAnalytics",
    "StopMonitoring",
    "StopPerformance",
    "StopUserActivity",
    "StreamStarted",
    "StreamStopped",
    "SystemMetrics",
    "UserActivity",
    "ValidationFailed",
]

Hours = Annotated[int, msgspec.Meta(ge=1, le=720)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
FieldName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Dashboard_ = Literal["quotes", "conversion", "performance"]


# ================================================================ client -> server


class QuoteSubscribe(ClientMessage, tag="quote_subscribe", frozen=True):
    """Join room ``quote:{quote_id}`` and get ``quote_state``."""

    quote_id: uuid.UUID
    id: MessageId = None


class QuoteEdit(ClientMessage, tag="quote_edit", frozen=True):
    """Set one editable field if the quote is still at ``base_version``."""

    quote_id: uuid.UUID
    field: FieldName
    value: msgspec.Raw
    base_version: Annotated[int, msgspec.Meta(ge=1)]
    id: MessageId = None


class FieldFocus(ClientMessage, tag="field_focus", frozen=True):
    """Tell the quote's room that this connection edits ``field``."""

    quote_id: uuid.UUID
    field: FieldName
    id: MessageId = None


class FieldBlur(ClientMessage, tag="field_blur", frozen=True):
    """Tell the quote's room that this connection stopped editing ``field``."""

    quote_id: uuid.UUID
    field: FieldName
    id: MessageId = None


class StartAnalytics(ClientMessage, tag="start_analytics", frozen=True):
    """Watch a dashboard; ``filters`` is validated per dashboard (unknown keys rejected)."""

    dashboard: Dashboard_
    filters: msgspec.Raw
    id: MessageId = None


class StopAnalytics(ClientMessage, tag="stop_analytics", frozen=True):
    """Stop watching every filter set of ``dashboard``."""

    dashboard: Dashboard_
    id: MessageId = None


class StartMonitoring(ClientMessage, tag="start_monitoring", frozen=True):
    """Stream ``system_metrics`` every ``update_interval`` seconds and receive alerts."""

    update_interval: float
    id: MessageId = None


class StopMonitoring(ClientMessage, tag="stop_monitoring", frozen=True):
    """Stop the ``system_metrics`` stream (and alerts)."""

    id: MessageId = None


class StartUserActivity(ClientMessage, tag="start_user_activity", frozen=True):
    """Stream ``admin_activity_logs`` rows matching ``filters``."""

    filters: msgspec.Raw
    id: MessageId = None


class StopUserActivity(ClientMessage, tag="stop_user_activity", frozen=True):
    """Stop the ``user_activity`` stream."""

    id: MessageId = None


class StartPerformance(ClientMessage, tag="start_performance", frozen=True):
    """Stream ``performance_metrics`` for the named metrics."""

    metrics: Annotated[list[str], msgspec.Meta(min_length=1, max_length=64)]
    id: MessageId = None


class StopPerformance(ClientMessage, tag="stop_performance", frozen=True):
    """Stop the ``performance_metrics`` stream."""

    id: MessageId = None


class DashboardSave(ClientMessage, tag="dashboard_save", frozen=True):
    """Create or replace one of the admin's saved dashboards."""

    dashboard_name: Name
    configuration: msgspec.Raw
    is_default: bool
    id: MessageId = None


class DashboardList(ClientMessage, tag="dashboard_list", frozen=True):
    """List the admin's saved dashboards."""

    id: MessageId = None


class ResolveAlert(ClientMessage, tag="resolve_alert", frozen=True):
    """Mark a system alert resolved by this admin."""

    alert_id: Annotated[int, msgspec.Meta(ge=1)]
    id: MessageId = None


class AlertsList(ClientMessage, tag="alerts_list", frozen=True):
    """The unresolved alerts, newest first."""

    id: MessageId = None




# ================================================================ filters


class _Filters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class QuotesFilters(_Filters, frozen=True):
    """Quotes dashboard: quotes created in the last ``hours``; ``state`` (e.g. "CA") or all."""

    hours: Hours
    state: Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")] | None = None


class ConversionFilters(_Filters, frozen=True):
    """Conversion funnel of the quotes created in the last ``hours``."""

    hours: Hours


class PerformanceFilters(_Filters, frozen=True):
    """The performance dashboard takes no filter (send ``{}``)."""


class ActivityFilters(_Filters, frozen=True):
    """``admin_activity_logs`` of the last ``hours``; each other key narrows (absent = any)."""

    hours: Hours
    admin_user_id: Name | None = None
    action: Name | None = None
    resource_type: Name | None = None
    status: Name | None = None


# ================================================================ server -> client: quotes


class QuoteState(ServerMessage, tag="quote_state", frozen=True):
    """The quote as stored when the subscription was made."""

    quote_id: uuid.UUID
    quote: Quote
    version: int
    editable_fields: dict[str, str]
    id: MessageId = None


class QuoteUpdateOut(ServerMessage, tag="quote_update", frozen=True):
    """A backend changed the quote (from the ingress)."""

    quote_id: uuid.UUID
    update_type: str
    data: msgspec.Raw
    version: int


class CalculationProgressOut(ServerMessage, tag="calculation_progress", frozen=True):
    """Progress (0..1) of the quote's rating calculation (from the ingress)."""

    quote_id: uuid.UUID
    progress: float
    stage: str


class FieldUpdate(ServerMessage, tag="field_update", frozen=True):
    """Another editor changed a field; the quote is now at ``version``."""

    quote_id: uuid.UUID
    field: str
    value: msgspec.Raw
    version: int
    updated_by: str | None


class EditAck(ServerMessage, tag="ack", frozen=True):
    """``quote_edit`` applied: the quote is at ``version``; ``seq`` of the field_update.

    ``seq`` is absent when the field_update could not be published (an
    ``error`` with code ``bus_unavailable`` follows).
    """

    room: str
    quote_id: uuid.UUID
    field: str
    version: int
    seq: int | None = None
    id: MessageId = None


class FieldFocused(ServerMessage, tag="field_focus", frozen=True):
    """``user`` (connection ``connection_id``) started editing ``field``."""

    quote_id: uuid.UUID
    field: str
    user: str | None
    connection_id: str


class FieldBlurred(ServerMessage, tag="field_blur", frozen=True):
    """``user`` (connection ``connection_id``) stopped editing ``field``."""

    quote_id: uuid.UUID
    field: str
    user: str | None
    connection_id: str


class DomainError(ServerMessage, tag="error", frozen=True):
    """An ``error`` frame (same shape as the core one)."""

    code: str
    message: str
    action: str
    id: MessageId = None


class ValidationFailed(ServerMessage, tag="error", frozen=True):
    """``error`` with code ``validation_error`` naming the invalid ``field``."""

    code: Literal["validation_error"]
    field: str
    message: str
    action: str
    id: MessageId = None


class ConflictError(ServerMessage, tag="error", frozen=True):
    """``error`` with code ``conflict``: the quote moved on; current value and version.

    ``current_value`` is ``null`` when the field is not set.
    """

    code: Literal["conflict"]
    quote_id: uuid.UUID
    field: str
    current_value: msgspec.Raw | None
    current_version: int
    message: str
    action: str
    id: MessageId = None


# ================================================================ server -> client: analytics


class AnalyticsStarted(ServerMessage, tag="analytics_started", frozen=True):
    """The dashboard is watched: updates arrive in ``room``, events in ``events_room``."""

    dashboard: str
    filters: msgspec.Raw
    room: str
    events_room: str
    interval: float
    id: MessageId = None


class AnalyticsStopped(ServerMessage, tag="analytics_stopped", frozen=True):
    """The dashboard's streams of this connection are stopped (``rooms`` left)."""

    dashboard: str
    rooms: list[str]
    id: MessageId = None


class Latency(msgspec.Struct, frozen=True):
    """Percentiles (milliseconds) of the latest ``count`` samples of one operation."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class Rates(msgspec.Struct, frozen=True):
    """Per-second rates over the last interval of this worker."""

    messages_in: float
    messages_out: float
    publications: float
    deliveries: float
    errors: float
    bytes_written: float


class PerformanceSnapshot(msgspec.Struct, frozen=True):
    """Numbers rtserver measured itself on one worker."""

    worker: int
    rates: Rates
    handler_latency_ms: Latency
    publish_latency_ms: Latency
    query_latency_ms: Latency
    event_loop_lag_ms: Latency
    fanout: dict[str, int]
    slow_consumers_total: int


class AnalyticsUpdate(ServerMessage, tag="analytics_update", frozen=True):
    """Aggregates of one (dashboard, filters) for interval ``interval_no``.

    ``interval_no`` is ``floor(unix_time / analytics_interval)`` of the tick:
    across workers each interval is computed once (see docs/domain.md).
    """

    dashboard: str
    room: str
    filters: msgspec.Raw
    interval_no: int
    worker: int
    data: QuotesDashboard | ConversionFunnel | PerformanceSnapshot


class AnalyticsEventOut(ServerMessage, tag="analytics_event", frozen=True):
    """A domain event from the backends affecting ``dashboard``."""

    dashboard: str
    event: str
    quote_id: uuid.UUID | None
    data: msgspec.Raw


class AnalyticsError(ServerMessage, tag="analytics_error", frozen=True):
    """One interval of ``room`` could not be computed."""

    dashboard: str
    room: str
    code: str
    message: str
    action: str


# ================================================================ server -> client: admin


class StreamStarted(ServerMessage, tag="stream_started", frozen=True):
    """An admin stream started (``monitoring``, ``user_activity`` or ``performance``)."""

    stream: str
    interval: float
    id: MessageId = None


class StreamStopped(ServerMessage, tag="stream_stopped", frozen=True):
    """An admin stream stopped (``was_running`` false when there was none)."""

    stream: str
    was_running: bool
    id: MessageId = None


class BusState(msgspec.Struct, frozen=True):
    """The bus as this worker sees it."""

    kind: str
    ok: bool
    reason: str | None


class DatabaseState(msgspec.Struct, frozen=True):
    """The database as this worker sees it (``configured`` false without --database)."""

    configured: bool
    ok: bool
    reason: str | None
    pool: PoolState | None
    open_connections_by_worker: dict[str, int] | None


class SystemMetrics(ServerMessage, tag="system_metrics", frozen=True):
    """One monitoring sample of this worker (plus cluster-wide connection records)."""

    worker: int
    server_time: str
    uptime: float
    connections: dict[str, int]
    rooms: int
    subscriptions: int
    rates: Rates
    errors_by_code: dict[str, int]
    bus: BusState
    database: DatabaseState
    degraded: dict[str, str]
    slow_consumers_total: int


class UserActivity(ServerMessage, tag="user_activity", frozen=True):
    """Admin activity rows: the latest ones first (``initial``), then new ones oldest first."""

    initial: bool
    entries: list[AdminActivity]


class PerformanceMetrics(ServerMessage, tag="performance_metrics", frozen=True):
    """The requested metrics of this worker."""

    worker: int
    server_time: str
    metrics: dict[str, float | Latency]


class DashboardSaved(ServerMessage, tag="dashboard_saved", frozen=True):
    """The dashboard as stored."""

    dashboard: Dashboard
    id: MessageId = None


class DashboardsReply(ServerMessage, tag="dashboards", frozen=True):
    """The admin's saved dashboards, default first then by name."""

    dashboards: list[Dashboard]
    id: MessageId = None


class AdminAlert(ServerMessage, tag="admin_alert", frozen=True):
    """An alert for monitoring admins.

    ``alert_id`` is null (and ``stored`` false) when the database could not
    store it yet; once stored it is sent again with its id and ``stored`` true
    (same ``raised_at``).
    """

    alert_id: int | None
    alert_type: str
    severity: str
    message: str
    data: msgspec.Raw
    raised_at: str
    stored: bool
    worker: int


class AlertResolved(ServerMessage, tag="alert_resolved", frozen=True):
    """An admin resolved an alert."""

    alert_id: int
    resolved_by: str | None
    resolved_at: str | None
    id: MessageId = None


class AlertsReply(ServerMessage, tag="alerts", frozen=True):
    """Unresolved alerts, newest first (at most ``domain.alerts_list_limit``)."""

    alerts: list[SystemAlert]
    id: MessageId = None
