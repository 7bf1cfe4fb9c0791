"""A worker's component states and system alerts, announced to whoever registered.

A backend (bus, database, ingress) that degrades or recovers is marked here:
one log line, ``/healthz`` reasons, and every registered component-state
listener (the insurance domain turns them into admin alerts). A system alert
raised by the core (a respawned worker, a stream gap) is logged, counted and
handed to every registered alert sink. While the domains are stopped nothing
is announced to them (they spawn no more work).
"""

from __future__ import annotations

from rtserver.core_metrics import ALERTS
from rtserver.jsonlog import get_logger
from rtserver.router import Router
from rtserver.tasks import TASK_FAILURES

__all__ = ["ComponentStates"]

log = get_logger("rtserver.node")


class ComponentStates:
    """Degraded components of one worker and the announcement of their changes."""

    def __init__(self, router: Router) -> None:
        self.router = router
        #: component -> reason, while degraded.
        self.degraded: dict[str, str] = {}
        #: Whether the domains are started (announcements reach them only then).
        self.announcing = False

    def set(self, component: str, degraded: bool, reason: str | None) -> None:
        """Mark ``component`` degraded (with ``reason``) or recovered; announce it."""
        if degraded:
            if self.degraded.get(component) == reason:
                return
            self.degraded[component] = reason or "degraded"
            log.error("component_degraded", component=component, reason=reason)
        else:
            if component not in self.degraded:
                return
            del self.degraded[component]
            log.info("component_recovered", component=component)
        if not self.announcing:
            return
        for listener in self.router.state_listeners:
            listener(component, not degraded, reason)

    async def raise_alert(self, alert_type: str, severity: str, message: str,
                          details: object) -> None:
        """Log and count a system alert, then hand it to every registered alert sink."""
        ALERTS.inc(alert_type)
        sinks = self.router.alert_sinks if self.announcing else []
        log.warning("system_alert", alert_type=alert_type, severity=severity, message=message,
                    details=details, sinks=len(sinks))
        for sink in sinks:
            try:
                await sink(alert_type, severity, message, details)
            except Exception as exc:  # noqa: BLE001 - logged and counted; other sinks go on
                TASK_FAILURES.inc()
                log.error("alert_sink_failed", alert_type=alert_type, error=repr(exc))
