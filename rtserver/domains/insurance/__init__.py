"""The insurance domain: live quotes, analytics dashboards, admin streams, alerts, notifications.

A domain plugin (:class:`InsuranceDomain`, enabled by ``[domains] enabled =
["insurance"]``); see docs/domain.md for its messages and rtserver/plugin.py
for the interface. One instance per node holds all of the domain's per-node
state (its parts below); per-connection state is dropped by the one
disconnect hook.
"""

from __future__ import annotations

from typing import Any, ClassVar

from websockets.http11 import Request, Response

from rtserver.context import Connection, HandlerContext
from rtserver.jsonlog import get_logger
from rtserver.plugin import DomainPlugin
from rtserver.router import Router

from .admin import MONITORING, PERFORMANCE, USER_ACTIVITY, AdminStreams
from .admin_actions import AdminActions
from .alerts import ALERTS_ROOM, Alerts
from .analytics import Analytics
from .domain import Domain
from .health import SnapshotCache, admin_health_response, health_snapshot
from .ingress_kinds import AlertEvent, AnalyticsEvent, CalculationProgress, QuoteUpdate
from .messages import (
    AlertsList,
    DashboardList,
    DashboardSave,
    FieldBlur,
    FieldFocus,
    QuoteEdit,
    QuoteSubscribe,
    ResolveAlert,
    StartAnalytics,
    StartMonitoring,
    StartPerformance,
    StartUserActivity,
    StopAnalytics,
    StopMonitoring,
    StopPerformance,
    StopUserActivity,
)
from .notifications import Notifications
from .quotes import Quotes

__all__ = ["ALERTS_ROOM", "Domain", "InsuranceDomain", "health_snapshot"]

log = get_logger("rtserver.domains.insurance")


class InsuranceDomain(DomainPlugin):
    """The insurance domain on one node."""

    name: ClassVar[str] = "insurance"
    #: Shared state of the parts (settings, context, latency windows, tasks).
    state: Domain
    quotes: Quotes
    analytics: Analytics
    admin: AdminStreams
    alerts: Alerts
    notifications: Notifications
    actions: AdminActions

    def install(self, router: Router, ctx: HandlerContext) -> None:
        """Register every message handler, hook, ingress kind and the /admin/health route."""
        d = self.state = Domain(ctx, self.config.domain)
        self._health_cache = SnapshotCache(self.config.admin.health_cache_seconds)
        self.quotes = quotes = Quotes(d)
        self.analytics = analytics = Analytics(d)
        self.admin = admin = AdminStreams(d)
        self.alerts = alerts = Alerts(d, admin.monitors)
        self.actions = AdminActions(d, alerts)
        self.actions.install(router)  # its close filter first, before notifications'
        self.notifications = Notifications(ctx)
        self.notifications.install(router)
        for message_type, fn in (
            (QuoteSubscribe, quotes.subscribe), (QuoteEdit, quotes.edit),
            (FieldFocus, quotes.focus_changed), (FieldBlur, quotes.focus_changed),
            (StartAnalytics, analytics.start), (StopAnalytics, analytics.stop),
            (StartMonitoring, admin.start_monitoring),
            (StopMonitoring, lambda conn, msg: admin.stop(conn, MONITORING, msg.id)),
            (StartUserActivity, admin.start_user_activity),
            (StopUserActivity, lambda conn, msg: admin.stop(conn, USER_ACTIVITY, msg.id)),
            (StartPerformance, admin.start_performance),
            (StopPerformance, lambda conn, msg: admin.stop(conn, PERFORMANCE, msg.id)),
            (DashboardSave, admin.dashboard_save), (DashboardList, admin.dashboard_list),
            (ResolveAlert, alerts.resolve), (AlertsList, alerts.list),
        ):
            router.register(message_type, d.bind(fn))
        router.on_unsubscribe(self._on_unsubscribe)
        router.on_disconnect(self._on_disconnect)
        router.register_ingress(QuoteUpdate, quotes.backend_update)
        router.register_ingress(CalculationProgress, quotes.backend_update)
        router.register_ingress(AnalyticsEvent, analytics.backend_event)
        router.register_ingress(AlertEvent, alerts.backend_alert)
        router.add_http_route("/admin/health", self._admin_health)
        router.on_component_state(alerts.on_state)
        router.on_alert(alerts.sink)

    async def start(self) -> None:
        """Start the alerts watchdog."""
        d = self.state
        self.alerts.start()
        log.info("insurance_domain_started", database=d.ctx.store is not None,
                 editable_fields=sorted(d.settings.editable_fields),
                 analytics_interval=d.settings.analytics_interval,
                 features_without_database=["analytics:performance", "start_monitoring",
                                            "start_performance", "field_focus", "field_blur"]
                 if d.ctx.store is None else None)

    async def stop(self) -> None:
        """End every stream and task."""
        await self.admin.close()
        await self.analytics.close()
        await self.state.cancel_tasks()

    async def snapshot(self) -> dict[str, Any]:
        """The ``/admin/health`` document."""
        return await health_snapshot(self.state, self.admin, self.analytics, self.alerts,
                                     self._health_cache)

    async def _admin_health(self, request: Request) -> Response:
        """``GET /admin/health`` (the token was checked by the core's admin gate); its
        database queries run at most once per ``admin.health_cache_seconds``."""
        return admin_health_response(await self.snapshot())

    async def _on_unsubscribe(self, conn: Connection, room: str) -> None:
        self.analytics.left_room(conn, room)
        self.admin.left_room(conn, room)
        await self.quotes.left_room(conn, room)

    async def _on_disconnect(self, conn: Connection) -> None:
        self.analytics.forget(conn)
        self.admin.forget(conn)
        self.quotes.focus.pop(conn.id, None)
