"""Domain handlers: live quotes, analytics dashboards, admin monitoring and alerts.

Wiring (the server does this; see docs/domain.md)::

    router = Router()
    install_handlers(router)                    # messages + hooks
    server = RtServer(config, router=router, store=store,
                      http_routes={"/admin/health": ...})
    await server.start()
    await start_domain(server.node, config.domain)   # DomainSettings
    server.http_routes["/admin/health"] = admin_health_route(server.node)
    ...ingress handler: `await handle_domain_ingress(node, message)` for
       quote_update / calculation_progress / analytics_event / alert
    await stop_domain(server.node)              # before server.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtserver.domain_settings import DomainSettings
from rtserver.hub import Connection
from rtserver.jsonlog import get_logger
from rtserver.router import Router
from rtserver.store import (
    AlertEvent,
    AnalyticsEvent,
    CalculationProgress,
    IngressPayload,
    QuoteUpdate,
)

from .admin import (
    AdminStreams,
    admin_health_route,
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
from .domain import Domain, DomainNotStarted, domain_of, maybe_domain, register_domain
from .domain import unregister_domain as _unregister
from .messages import (
    AdminAlert,
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
from .quotes import Quotes, on_field_focus, on_quote_edit, on_quote_subscribe

if TYPE_CHECKING:
    from rtserver.node import Node

__all__ = [
    "ALERTS_ROOM",
    "Domain",
    "DomainNotStarted",
    "DomainSettings",
    "admin_health_route",
    "domain_of",
    "handle_domain_ingress",
    "health_snapshot",
    "install_handlers",
    "raise_alert",
    "start_domain",
    "stop_domain",
]

log = get_logger("rtserver.handlers")


async def _on_unsubscribe(node: Node, conn: Connection, room: str) -> None:
    d = maybe_domain(node)
    if d is None:
        return
    d.analytics.left_room(conn, room)
    d.admin.left_room(conn, room)
    await d.quotes.left_room(conn, room)


async def _on_disconnect(node: Node, conn: Connection) -> None:
    d = maybe_domain(node)
    if d is None:
        return
    d.analytics.forget(conn)
    d.admin.forget(conn)
    d.quotes.focus.pop(conn.id, None)


def install_handlers(router: Router) -> None:
    """Register every domain message handler and hook on ``router``."""
    router.register(QuoteSubscribe, on_quote_subscribe)
    router.register(QuoteEdit, on_quote_edit)
    router.register(FieldFocus, on_field_focus)
    router.register(FieldBlur, on_field_focus)
    router.register(StartAnalytics, on_start_analytics)
    router.register(StopAnalytics, on_stop_analytics)
    router.register(StartMonitoring, on_start_monitoring)
    router.register(StopMonitoring, on_stop_monitoring)
    router.register(StartUserActivity, on_start_user_activity)
    router.register(StopUserActivity, on_stop_user_activity)
    router.register(StartPerformance, on_start_performance)
    router.register(StopPerformance, on_stop_performance)
    router.register(DashboardSave, on_dashboard_save)
    router.register(DashboardList, on_dashboard_list)
    router.register(ResolveAlert, on_resolve_alert)
    router.register(AlertsList, on_alerts_list)
    router.on_unsubscribe(_on_unsubscribe)
    router.on_disconnect(_on_disconnect)


async def start_domain(node: Node, settings: DomainSettings) -> Domain:
    """Create the node's domain state, listen to its component states, start the watchdog.

    Call after ``RtServer.start()`` (the node must be started); raises
    ``ValueError`` for invalid settings.
    """
    domain = Domain(node, settings)
    domain.quotes = Quotes(domain)
    domain.analytics = Analytics(domain)
    domain.admin = AdminStreams(domain)
    domain.alerts = Alerts(domain)
    register_domain(domain)
    node.state_listeners.append(domain.alerts.on_state)
    domain.alerts.start()
    log.info("domain_started", database=node.store is not None,
             editable_fields=sorted(settings.editable_fields),
             analytics_interval=settings.analytics_interval,
             features_without_database=["analytics:performance", "start_monitoring",
                                        "start_performance", "field_focus", "field_blur"]
             if node.store is None else None)
    return domain


async def stop_domain(node: Node) -> None:
    """End every domain stream and task of ``node`` (call before ``RtServer.stop()``)."""
    domain = _unregister(node)
    if domain is None:
        return
    if domain.alerts.on_state in node.state_listeners:
        node.state_listeners.remove(domain.alerts.on_state)
    await domain.admin.close()
    await domain.analytics.close()
    await domain.cancel_tasks()
    log.info("domain_stopped")


async def handle_domain_ingress(node: Node, message: IngressPayload) -> bool:
    """Act on a domain ingress message; False when ``message`` is not a domain one.

    ``quote_update`` / ``calculation_progress`` go to room ``quote:{id}``,
    ``analytics_event`` to the affected ``analytics:{dashboard}`` rooms,
    ``alert`` is stored and sent to monitoring admins. Raises
    :class:`DomainNotStarted` when start_domain() was not called, and the
    bus/store exceptions (the ingress listener logs and counts them).
    """
    if not isinstance(message, (QuoteUpdate, CalculationProgress, AnalyticsEvent, AlertEvent)):
        return False
    domain = domain_of(node)
    if isinstance(message, (QuoteUpdate, CalculationProgress)):
        await domain.quotes.backend_update(message)
    elif isinstance(message, AnalyticsEvent):
        await domain.analytics.backend_event(message)
    else:
        await domain.alerts.backend_alert(message)
    return True


async def raise_alert(node: Node, alert_type: str, severity: str, message: str,
                      details: object) -> AdminAlert:
    """Raise a system alert from server code (e.g. "worker_respawned"); see alerts.py."""
    return await domain_of(node).alerts.raise_alert(alert_type, severity, message, details)
