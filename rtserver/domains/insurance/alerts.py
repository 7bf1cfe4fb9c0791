"""System alerts: raised by rtserver and the ingress, stored, sent to monitoring admins.

Sources: the node's state listeners (bus or database degraded / recovered),
the ingress (``alert`` payloads), slow consumers closed above
``domain.slow_consumer_alert_threshold`` per ``slow_consumer_alert_window``,
and the core's system alerts (``router.on_alert``: e.g. a respawned worker).

Each alert is stored in ``system_alerts`` and published as ``admin_alert`` to
room ``admin:alerts`` (every admin running ``start_monitoring`` is in it, on
every worker). When the database cannot store it, admins get it at once with
``alert_id`` null and ``stored`` false, and it is kept (at most
``domain.alert_pending_max``) and stored when the database answers again,
then sent again with its id. When the bus cannot publish it, it goes to this
worker's monitoring admins only (logged and counted).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

from rtserver.backoff import BackoffPolicy
from rtserver.context import BusUnavailable, Connection
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.session import utc_now
from rtserver.store import Store, StoreUnavailable, SystemAlert
from rtserver.store.postgres import encode_json

from .domain import NOT_FOUND, Domain
from .ingress_kinds import AlertEvent
from .messages import AdminAlert, AlertResolved, AlertsList, AlertsReply, ResolveAlert
from .queries import create_shared_alert

__all__ = ["ALERTS_ROOM", "Alerts"]

log = get_logger("rtserver.domains.insurance.alerts")

ALERTS_ROOM = "admin:alerts"

RAISED = REGISTRY.counter(
    "rtserver_alerts_raised_total", "System alerts raised", ("alert_type", "severity"))
NOT_STORED = REGISTRY.counter(
    "rtserver_alerts_not_stored_total",
    "Alerts that could not be stored when raised", ("reason",))
LOST = REGISTRY.counter(
    "rtserver_alerts_lost_total",
    "Alerts never stored because domain.alert_pending_max was reached")
DEDUPLICATED = REGISTRY.counter(
    "rtserver_alerts_deduplicated_total",
    "Shared-component alerts not raised again because another worker raised them",
    ("alert_type",))
LOCAL_ONLY = REGISTRY.counter(
    "rtserver_alerts_local_only_total",
    "Alerts sent to this worker's admins only because the bus was unavailable")


class _Pending(msgspec.Struct):
    alert_type: str
    severity: str
    message: str
    details: bytes
    raised_at: str
    #: The shared component (bus, database) when stored once per cluster.
    shared: str | None = None


#: The alert types of a component's state: the latest one is its state for the cluster.
COMPONENT_STATE_ALERTS = ("component_degraded", "component_recovered")
#: Components every worker sees fail together: their alerts are raised once per cluster.
SHARED_PREFIXES = ("bus", "database", "store", "redis", "ingress")
#: Shared components that carry the alerts themselves: each worker shows their alerts
#: to its own admins (the bus cannot be trusted to deliver news about itself).
BUS_PREFIXES = ("bus", "redis")


class Alerts:
    """Alert manager of one node."""

    def __init__(self, domain: Domain, monitors: set[str]) -> None:
        self.domain = domain
        #: Connections running start_monitoring on this worker (the admin streams' set):
        #: the local delivery when the bus is down.
        self.monitors = monitors
        self.pending: deque[_Pending] = deque()
        self._slow_samples: deque[tuple[float, float]] = deque()
        self._slow_alerted_at = -1e18
        self._watch_task: asyncio.Task[Any] | None = None
        self._flush_lock = asyncio.Lock()

    def start(self) -> None:
        """Start the watchdog (loop lag, slow-consumer rate, unstored alerts).

        Supervised: a failure is logged and counted, and the watchdog restarts
        after ``domain.loop_lag_interval`` (doubling up to 60 s)."""
        interval = self.domain.settings.loop_lag_interval
        self._watch_task = self.domain.spawn(
            self._watch, "alerts-watchdog",
            restart=BackoffPolicy(initial_delay=interval, max_delay=max(60.0, interval)))

    async def sink(self, alert_type: str, severity: str, message: str, details: object) -> None:
        """The core's system alerts (``router.on_alert``): stored and sent to admins."""
        await self.raise_alert(alert_type, severity, message, details)

    # ------------------------------------------------------------ raising

    def on_state(self, component: str, ok: bool, reason: str | None) -> None:
        """Node state listener: a component degraded or recovered."""
        critical = component.startswith(("bus", "database", "store", "redis"))
        if ok:
            severity, alert_type = "low", "component_recovered"
            message = f"{component} recovered"
        else:
            severity = "critical" if critical else "high"
            alert_type = "component_degraded"
            message = f"{component} degraded: {reason or 'no reason given'}"
        details = {"component": component, "ok": ok, "reason": reason,
                   "worker": self.domain.ctx.worker_id}
        shared = component if component.startswith(SHARED_PREFIXES) else None

        async def raise_it() -> None:
            await self.raise_alert(alert_type, severity, message, details, shared=shared)

        self.domain.spawn(raise_it, f"alert-{alert_type}")
        if ok and self.pending:
            self.domain.spawn(self.flush_pending, "alerts-flush")

    async def _store(self, store: Store, p: _Pending) -> tuple[SystemAlert, bool]:
        """Store one alert: (the alert, False); for a shared component whose same state
        change another worker stored within ``admin.shared_alert_window``: (that alert,
        True), counted and logged."""
        if p.shared is None:
            return await store.create_alert(alert_type=p.alert_type, severity=p.severity,
                                            message=p.message, details=p.details), False
        alert, duplicate = await create_shared_alert(
            store, alert_type=p.alert_type, severity=p.severity, message=p.message,
            details=p.details, component=p.shared, state_types=COMPONENT_STATE_ALERTS,
            window=self.domain.ctx.config.admin.shared_alert_window)
        if duplicate:
            DEDUPLICATED.inc(p.alert_type)
            log.info("alert_deduplicated", alert_type=p.alert_type, component=p.shared,
                     alert_id=alert.id, note="another worker stored it for the cluster; "
                     "shown to this worker's admins with its id")
        return alert, duplicate

    async def raise_alert(self, alert_type: str, severity: str, message: str,
                          details: object, *, shared: str | None = None) -> AdminAlert:
        """Store an alert and send it to the monitoring admins; returns what was sent.

        ``shared`` names a component every worker depends on (bus, database, Redis,
        ingress): its state change is stored once for the cluster (the first
        worker's row; the others find it, counted in
        ``rtserver_alerts_deduplicated_total``). Who shows it: for the bus and Redis
        (which would carry the alert), every worker seeing the change shows it to
        its own monitoring admins with the one stored id; for the other shared
        components the first worker publishes it to every admin, the others only
        to their own admins when their bus is down. An alert that cannot be stored
        (database down) is shown by each worker to its own admins."""
        d = self.domain
        raised_at = utc_now()
        details_json = encode_json(details)
        pending = _Pending(alert_type, severity, message, details_json, raised_at, shared)
        alert_id: int | None = None
        duplicate = False
        store = d.ctx.store
        if store is None:
            NOT_STORED.inc("no_database")
            log.warning("alert_not_stored", alert_type=alert_type,
                        reason="the server runs without a database",
                        action="start with --database to keep alerts")
        else:
            try:
                alert, duplicate = await d.timed_query(self._store(store, pending))
            except StoreUnavailable as exc:
                NOT_STORED.inc("database_unavailable")
                self._keep(pending, str(exc))
            else:
                alert_id = alert.id
                if duplicate:
                    severity, message = alert.severity, alert.message
                    details_json = encode_json(alert.details)
        if not duplicate:
            RAISED.inc(alert_type, severity)
            log.warning("alert_raised", alert_type=alert_type, severity=severity,
                        message=message)
        frame = AdminAlert(alert_id=alert_id, alert_type=alert_type, severity=severity,
                           message=message, data=msgspec.Raw(details_json),
                           raised_at=raised_at, stored=alert_id is not None,
                           worker=d.ctx.worker_id)
        if shared is None:
            await self.deliver(frame)
        elif shared.startswith(BUS_PREFIXES) or alert_id is None:
            self.deliver_local(frame)
        elif not duplicate:
            await self.deliver(frame)
        elif not d.ctx.stats().bus.ok:
            self.deliver_local(frame)
        return frame

    def deliver_local(self, frame: AdminAlert) -> None:
        """Send to this worker's monitoring admins only (shared-component alerts)."""
        for conn_id in self.monitors:
            self.domain.ctx.send_to_connection(conn_id, frame)

    def _keep(self, pending: _Pending, error: str) -> None:
        if len(self.pending) >= self.domain.settings.alert_pending_max:
            LOST.inc()
            log.error("alert_lost", alert_type=pending.alert_type, message=pending.message,
                      reason="domain.alert_pending_max alerts already wait for the database",
                      action="restore the database; raise domain.alert_pending_max")
            return
        self.pending.append(pending)
        log.error("alert_pending", alert_type=pending.alert_type, error=error,
                  pending=len(self.pending), note="stored when the database answers")

    async def deliver(self, frame: AdminAlert | AlertResolved,
                      exclude: Connection | None = None) -> None:
        """Publish to room admin:alerts; this worker's admins only when the bus is down."""
        try:
            await self.domain.publish(ALERTS_ROOM, frame, exclude=exclude)
        except BusUnavailable as exc:
            LOCAL_ONLY.inc()
            log.error("alert_local_only", error=str(exc),
                      note="admins on other workers do not get this alert")
            for conn_id in self.monitors:
                if exclude is None or conn_id != exclude.id:
                    self.domain.ctx.send_to_connection(conn_id, frame)

    async def flush_pending(self) -> None:
        """Store the alerts kept while the database was unavailable (in order)."""
        store = self.domain.ctx.store
        if store is None:
            return
        async with self._flush_lock:
            while self.pending:
                p = self.pending[0]
                try:
                    alert, _ = await self._store(store, p)
                except StoreUnavailable:
                    # Still down: the alert stays pending (counted in health) and the
                    # periodic task retries; the store logged and counted the failure.
                    return
                self.pending.popleft()
                log.info("alert_stored_late", alert_id=alert.id, alert_type=p.alert_type)
                # Sent again with its id and the same raised_at as the unstored frame.
                frame = AdminAlert(
                    alert_id=alert.id, alert_type=p.alert_type, severity=p.severity,
                    message=p.message, data=msgspec.Raw(p.details), raised_at=p.raised_at,
                    stored=True, worker=self.domain.ctx.worker_id)
                if p.shared is None:
                    await self.deliver(frame)
                else:
                    # Each worker showed its unstored frame to its own admins: the
                    # stored copy (one id for the cluster) goes the same way.
                    self.deliver_local(frame)

    async def backend_alert(self, message: AlertEvent) -> None:
        """An ``alert`` from the ingress."""
        await self.raise_alert(message.alert_type, message.severity, message.message,
                               message.details)

    # ------------------------------------------------------------ watchdog

    async def _watch(self) -> None:
        s = self.domain.settings
        loop = asyncio.get_running_loop()
        self._slow_samples.append(
            (loop.time(), self.domain.ctx.stats().slow_consumers))  # the baseline
        while True:
            start = loop.time()
            await asyncio.sleep(s.loop_lag_interval)
            self.domain.loop_lag.add(max(0.0, loop.time() - start - s.loop_lag_interval))
            await self._check_slow_consumers(loop.time())
            if self.pending:
                await self.flush_pending()

    async def _check_slow_consumers(self, now: float) -> None:
        s = self.domain.settings
        total = self.domain.ctx.stats().slow_consumers
        samples = self._slow_samples
        samples.append((now, total))
        while samples and now - samples[0][0] > s.slow_consumer_alert_window:
            samples.popleft()
        closed = total - samples[0][1]
        if (closed >= s.slow_consumer_alert_threshold
                and now - self._slow_alerted_at >= s.slow_consumer_alert_window):
            self._slow_alerted_at = now
            await self.raise_alert(
                "slow_consumers", "medium",
                f"{int(closed)} slow consumers closed (1013) within "
                f"{s.slow_consumer_alert_window:g} s on worker {self.domain.ctx.worker_id}",
                {"closed": int(closed), "window_seconds": s.slow_consumer_alert_window,
                 "threshold": s.slow_consumer_alert_threshold,
                 "worker": self.domain.ctx.worker_id,
                 "limit_bytes": self.domain.ctx.config.limits.outbound_buffer_limit})

    # ------------------------------------------------------------ admin requests

    async def resolve(self, conn: Connection, msg: ResolveAlert) -> None:
        """``resolve_alert``: store the resolver, tell the other admins."""
        d = self.domain
        if not d.require_permission(conn, "admin:alerts", "resolve_alert", msg.id):
            return
        store = d.ctx.require_store(conn, "resolve_alert", msg.id)
        if store is None:
            return
        result = await d.timed_query(store.resolve_alert(msg.alert_id, conn.user or ""))
        if result.outcome == "not_found" or result.alert is None:
            d.error(conn, NOT_FOUND, f"alert {msg.alert_id} does not exist",
                    "Required action: resolve an alert id from admin_alert or alerts_list",
                    msg.id)
            return
        alert = result.alert
        resolved_at = alert.resolved_at.isoformat() if alert.resolved_at else None
        if result.outcome == "already_resolved":
            d.error(conn, "already_resolved",
                    f"alert {alert.id} was already resolved by {alert.resolved_by} at "
                    f"{resolved_at}", "Required action: none", msg.id)
            return
        await d.log_activity(conn, "resolve_alert", "system_alert", str(alert.id),
                                   {"alert_type": alert.alert_type})
        frame = AlertResolved(alert_id=alert.id, resolved_by=alert.resolved_by,
                              resolved_at=resolved_at)
        d.reply(conn, AlertResolved(alert_id=alert.id, resolved_by=alert.resolved_by,
                                    resolved_at=resolved_at, id=msg.id))
        await self.deliver(frame, exclude=conn)

    async def list(self, conn: Connection, msg: AlertsList) -> None:
        """``alerts_list``: the unresolved alerts."""
        d = self.domain
        if not d.require_permission(conn, "admin:monitor", "alerts_list", msg.id):
            return
        store = d.ctx.require_store(conn, "alerts_list", msg.id)
        if store is None:
            return
        alerts = await d.timed_query(store.list_unresolved_alerts(d.settings.alerts_list_limit))
        d.reply(conn, AlertsReply(alerts=alerts, id=msg.id))
