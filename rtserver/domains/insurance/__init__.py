"""The insurance domain: live quotes, analytics dashboards, admin streams, alerts, notifications.

A domain plugin (:class:`InsuranceDomain`, enabled by ``[domains] enabled =
["insurance"]``); see docs/domain.md for its messages and rtserver/plugin.py
for the interface. One instance per node holds all of the domain's per-node
state (its parts below); per-connection state is dropped by the one
disconnect hook.
"""

from __future__ import annotations

from typing import ClassVar

from websockets.http11 import Request, Response

from rtserver.context import Connection, HandlerContext
from rtserver.jsonlog import get_logger
from rtserver.plugin import DomainPlugin
from rtserver.router import Router
from rtserver.store.ingress import AlertEvent, AnalyticsEvent, CalculationProgress, QuoteUpdate

from .admin import (
    AdminStreams,
    admin_health,
    health_snapshot,
    on_dashboard_list,
    on_dashboard_save,
    on_start_monitoring,
    on_start_performance,
    on_start_user_activity,
    on_stop_monitoring,
    on_stop_performance,
    on_stop_user_activity,
)
from .alerts import ALERTS_ROOM, Alerts, on_alerts_list, on_resolve_alert
from .analytics import Analytics, on_start_analytics, on_stop_analytics
from .domain import Domain
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
from .quotes import Quotes, on_field_focus, on_quote_edit, on_quote_subscribe

__all__ = ["ALERTS_ROOM", "Domain", "InsuranceDomain", "health_snapshot"]

log = get_logger("rtserver.domains.insurance")


class InsuranceDomain(DomainPlugin):
    """The insurance domain on one node."""

    name: ClassVar[str] = "insurance"
    state: Domain

    def install(self, router: Router, ctx: HandlerContext) -> None:
        """Register every message handler, hook, ingress kind and the /admin/health route."""
        d = self.state = Domain(ctx, self.config.domain)
        d.quotes = Quotes(d)
        d.analytics = Analytics(d)
        d.admin = AdminStreams(d)
        d.alerts = Alerts(d)
        d.notifications = Notifications(ctx)
        d.notifications.install(router)
        for message_type, fn in (
            (QuoteSubscribe, on_quote_subscribe), (QuoteEdit, on_quote_edit),
            (FieldFocus, on_field_focus), (FieldBlur, on_field_focus),
            (StartAnalytics, on_start_analytics), (StopAnalytics, on_stop_analytics),
            (StartMonitoring, on_start_monitoring), (StopMonitoring, on_stop_monitoring),
            (StartUserActivity, on_start_user_activity),
            (StopUserActivity, on_stop_user_activity),
            (StartPerformance, on_start_performance), (StopPerformance, on_stop_performance),
            (DashboardSave, on_dashboard_save), (DashboardList, on_dashboard_list),
            (ResolveAlert, on_resolve_alert), (AlertsList, on_alerts_list),
        ):
            router.register(message_type, d.bind(fn))
        router.on_unsubscribe(self._on_unsubscribe)
        router.on_disconnect(self._on_disconnect)
        router.register_ingress(QuoteUpdate, d.quotes.backend_update)
        router.register_ingress(CalculationProgress, d.quotes.backend_update)
        router.register_ingress(AnalyticsEvent, d.analytics.backend_event)
        router.register_ingress(AlertEvent, d.alerts.backend_alert)
        router.add_http_route("/admin/health", self._admin_health)
        router.on_component_state(d.alerts.on_state)
        router.on_alert(d.alerts.sink)

    # Shortcuts to the parts (embedding code, tests).
    @property
    def quotes(self) -> Quotes:
        """Quote handlers' state."""
        return self.state.quotes

    @property
    def analytics(self) -> Analytics:
        """Analytics streams."""
        return self.state.analytics

    @property
    def admin(self) -> AdminStreams:
        """Admin streams."""
        return self.state.admin

    @property
    def alerts(self) -> Alerts:
        """The alert manager."""
        return self.state.alerts

    @property
    def notifications(self) -> Notifications:
        """Notification delivery."""
        return self.state.notifications

    async def start(self) -> None:
        """Start the alerts watchdog."""
        d = self.state
        d.alerts.start()
        log.info("insurance_domain_started", database=d.ctx.store is not None,
                 editable_fields=sorted(d.settings.editable_fields),
                 analytics_interval=d.settings.analytics_interval,
                 features_without_database=["analytics:performance", "start_monitoring",
                                            "start_performance", "field_focus", "field_blur"]
                 if d.ctx.store is None else None)

    async def stop(self) -> None:
        """End every stream and task."""
        d = self.state
        await d.admin.close()
        await d.analytics.close()
        await d.cancel_tasks()

    async def _admin_health(self, request: Request) -> Response:
        return await admin_health(self.state, request)

    async def _on_unsubscribe(self, conn: Connection, room: str) -> None:
        d = self.state
        d.analytics.left_room(conn, room)
        d.admin.left_room(conn, room)
        await d.quotes.left_room(conn, room)

    async def _on_disconnect(self, conn: Connection) -> None:
        d = self.state
        d.analytics.forget(conn)
        d.admin.forget(conn)
        d.quotes.focus.pop(conn.id, None)
