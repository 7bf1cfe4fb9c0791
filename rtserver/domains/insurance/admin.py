"""Admin dashboards: monitoring, user activity and performance streams; saved dashboards;
the ``GET /admin/health`` snapshot.

Each stream is one task per admin connection, ended by its ``stop_...``
message, by leaving room ``admin:alerts`` (monitoring) or by the connection
closing. Permissions: ``admin:monitor`` (monitoring, performance, dashboards,
alerts list), ``audit:read`` (user activity), ``admin:alerts`` (resolving).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from rtserver.context import Connection
from rtserver.jsonlog import get_logger
from rtserver.protocol.messages import MessageId
from rtserver.protocol.session import utc_now
from rtserver.store import StoreUnavailable

from .alerts import ALERTS_ROOM
from .domain import STORE_UNAVAILABLE, Domain
from .measure import PERFORMANCE_METRICS, RateTracker, select_metrics
from .messages import (
    ActivityFilters,
    BusState,
    DashboardList,
    DashboardSave,
    DashboardSaved,
    DashboardsReply,
    DatabaseState,
    DomainError,
    PerformanceMetrics,
    StartMonitoring,
    StartPerformance,
    StartUserActivity,
    StreamStarted,
    StreamStopped,
    SystemMetrics,
    UserActivity,
)
from .queries import activity_after

__all__ = ["MONITORING", "PERFORMANCE", "USER_ACTIVITY", "AdminStreams"]

log = get_logger("rtserver.domains.insurance.admin")

MONITORING, USER_ACTIVITY, PERFORMANCE = "monitoring", "user_activity", "performance"


class AdminStreams:
    """Admin streams of one node."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        # connection id -> stream name -> task
        self.streams: dict[str, dict[str, asyncio.Task[Any]]] = {}
        #: Connections running start_monitoring on this worker (alert fallback delivery).
        self.monitors: set[str] = set()

    # ------------------------------------------------------------ stream bookkeeping

    def _start(self, conn: Connection, name: str,
               factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._cancel(conn.id, name)

        def told(exc: BaseException, failures: int) -> None:
            # The stream ended: its viewer is told, never left waiting.
            self.domain.ctx.send_to_connection(conn.id, DomainError(
                code="stream_failed", message=f"the {name} stream stopped: {exc!r}",
                action=f"Required action: send start_{name} again; report the error if it "
                "repeats"))
            per_conn = self.streams.get(conn.id)
            if per_conn is not None:
                per_conn.pop(name, None)

        task = self.domain.spawn(factory, f"admin-{name}-{conn.id}", on_failure=told)
        self.streams.setdefault(conn.id, {})[name] = task

    def _cancel(self, conn_id: str, name: str) -> bool:
        per_conn = self.streams.get(conn_id)
        if per_conn is None or name not in per_conn:
            return False
        per_conn.pop(name).cancel()
        if not per_conn:
            del self.streams[conn_id]
        if name == MONITORING:
            self.monitors.discard(conn_id)
        return True

    def count(self, name: str) -> int:
        """Streams of ``name`` running on this worker."""
        return sum(1 for per_conn in self.streams.values() if name in per_conn)

    def left_room(self, conn: Connection, room: str) -> None:
        """Leaving admin:alerts ends the monitoring stream."""
        if room == ALERTS_ROOM:
            self._cancel(conn.id, MONITORING)

    def forget(self, conn: Connection) -> None:
        """A connection closed: end all its streams."""
        for name in list(self.streams.get(conn.id, {})):
            self._cancel(conn.id, name)
        self.monitors.discard(conn.id)

    async def close(self) -> None:
        """End every stream (server shutdown)."""
        tasks = [t for per_conn in self.streams.values() for t in per_conn.values()]
        self.streams.clear()
        self.monitors.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self, conn: Connection, name: str, msg_id: MessageId) -> None:
        """``stop_monitoring`` / ``stop_user_activity`` / ``stop_performance``."""
        was_running = self._cancel(conn.id, name)
        if name == MONITORING and ALERTS_ROOM in conn.rooms:
            await self.domain.ctx.unsubscribe(conn, ALERTS_ROOM)
        self.domain.reply(conn, StreamStopped(stream=name, was_running=was_running, id=msg_id))

    # ------------------------------------------------------------ monitoring

    async def start_monitoring(self, conn: Connection, msg: StartMonitoring) -> None:
        """``start_monitoring``: system_metrics every update_interval, plus admin alerts."""
        d = self.domain
        s = d.settings
        if not d.require_permission(conn, "admin:monitor", "start_monitoring", msg.id):
            return
        if not s.monitoring_min_interval <= msg.update_interval <= s.monitoring_max_interval:
            d.validation_error(
                conn, "update_interval",
                f"update_interval {msg.update_interval:g} s is outside "
                f"{s.monitoring_min_interval:g}..{s.monitoring_max_interval:g} s",
                f"Required action: send an update_interval between {s.monitoring_min_interval:g}"
                f" and {s.monitoring_max_interval:g}", msg.id)
            return
        if not await d.ctx.subscribe(conn, [ALERTS_ROOM], msg.id):
            return
        d.reply(conn, StreamStarted(stream=MONITORING, interval=msg.update_interval,
                                    id=msg.id))
        self._start(conn, MONITORING, lambda: self._monitor(conn, msg.update_interval))
        self.monitors.add(conn.id)

    async def _monitor(self, conn: Connection, interval: float) -> None:
        rates = RateTracker(self.domain)
        while True:
            metrics = await self.system_metrics(rates)
            self.domain.ctx.send_to_connection(conn.id, metrics)
            await asyncio.sleep(interval)

    async def system_metrics(self, rates: RateTracker) -> SystemMetrics:
        """One monitoring sample (the database's connection records span every worker)."""
        ctx = self.domain.ctx
        stats = ctx.stats()
        health = stats.bus
        store = ctx.store
        db: DatabaseState
        if store is None:
            db = DatabaseState(configured=False, ok=False,
                               reason="no database configured (--database)", pool=None,
                               open_connections_by_worker=None)
        else:
            try:
                counts = await self.domain.timed_query(store.open_connection_counts())
                db = DatabaseState(configured=True, ok=True, reason=None,
                                   pool=store.pool_state(),
                                   open_connections_by_worker={str(k): v
                                                               for k, v in counts.items()})
            except StoreUnavailable as exc:
                db = DatabaseState(configured=True, ok=False, reason=str(exc),
                                   pool=store.pool_state(), open_connections_by_worker=None)
        return SystemMetrics(
            worker=stats.worker,
            server_time=utc_now(),
            uptime=stats.uptime,
            connections=stats.connections_by_state,
            rooms=stats.rooms,
            subscriptions=stats.subscriptions,
            rates=rates.sample(),
            errors_by_code=stats.errors_by_code,
            bus=BusState(kind=health.kind, ok=health.ok, reason=health.reason),
            database=db,
            degraded=stats.degraded,
            slow_consumers_total=int(stats.slow_consumers),
        )

    # ------------------------------------------------------------ user activity

    async def start_user_activity(self, conn: Connection, msg: StartUserActivity) -> None:
        """``start_user_activity``: the latest matching rows, then new ones as they come."""
        d = self.domain
        if not d.require_permission(conn, "audit:read", "start_user_activity", msg.id):
            return
        try:
            filters = msgspec.json.decode(msg.filters, type=ActivityFilters)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            from .analytics import filters_field

            d.validation_error(conn, filters_field(str(exc)), f"invalid filters: {exc}",
                               "Required action: send the filters documented for "
                               "start_user_activity in docs/domain.md", msg.id)
            return
        store = d.ctx.require_store(conn, "start_user_activity", msg.id)
        if store is None:
            return
        since = datetime.now(UTC) - timedelta(hours=filters.hours)
        entries = await d.timed_query(store.query_admin_activity(
            admin_user_id=filters.admin_user_id, action=filters.action,
            resource_type=filters.resource_type, status=filters.status, since=since,
            until=None, before_id=None, limit=d.settings.user_activity_limit))
        d.reply(conn, StreamStarted(stream=USER_ACTIVITY,
                                    interval=d.settings.user_activity_interval, id=msg.id))
        d.reply(conn, UserActivity(initial=True, entries=entries))
        last_id = max((e.id for e in entries), default=0)
        self._start(conn, USER_ACTIVITY,
                    lambda: self._activity(conn, filters, since, last_id))

    async def _activity(self, conn: Connection, filters: ActivityFilters, since: datetime,
                        last_id: int) -> None:
        d = self.domain
        store = d.ctx.store
        assert store is not None
        reported = False
        while True:
            await asyncio.sleep(d.settings.user_activity_interval)
            try:
                entries = await d.timed_query(activity_after(
                    store, after_id=last_id, since=since, admin_user_id=filters.admin_user_id,
                    action=filters.action, resource_type=filters.resource_type,
                    status=filters.status, limit=d.settings.user_activity_limit))
            except StoreUnavailable as exc:
                log.error("user_activity_poll_failed", connection_id=conn.id, error=str(exc))
                if not reported:
                    reported = True
                    d.ctx.send_to_connection(conn.id, DomainError(
                        code=STORE_UNAVAILABLE,
                        message=f"user_activity cannot read the database: {exc}",
                        action="Required action: none; the stream resumes when the database "
                        "answers"))
                continue
            reported = False
            if entries:
                last_id = entries[-1].id
                d.ctx.send_to_connection(conn.id, UserActivity(initial=False, entries=entries))

    # ------------------------------------------------------------ performance

    async def start_performance(self, conn: Connection, msg: StartPerformance) -> None:
        """``start_performance``: the named metrics every ``domain.performance_interval``."""
        d = self.domain
        if not d.require_permission(conn, "admin:monitor", "start_performance", msg.id):
            return
        unknown = sorted({m for m in msg.metrics if m not in PERFORMANCE_METRICS})
        if unknown:
            d.error(conn, "unknown_metric", f"unknown metrics: {', '.join(unknown)}",
                    f"Required action: name metrics among {', '.join(PERFORMANCE_METRICS)}",
                    msg.id)
            return
        names = list(dict.fromkeys(msg.metrics))
        d.reply(conn, StreamStarted(stream=PERFORMANCE, interval=d.settings.performance_interval,
                                    id=msg.id))
        self._start(conn, PERFORMANCE, lambda: self._performance(conn, names))

    async def _performance(self, conn: Connection, names: list[str]) -> None:
        d = self.domain
        rates = RateTracker(d)
        while True:
            await asyncio.sleep(d.settings.performance_interval)
            d.ctx.send_to_connection(conn.id, PerformanceMetrics(
                worker=d.ctx.worker_id, server_time=utc_now(),
                metrics=select_metrics(d, rates, names)))

    # ------------------------------------------------------------ saved dashboards

    async def dashboard_save(self, conn: Connection, msg: DashboardSave) -> None:
        """``dashboard_save``: create or replace one of the admin's dashboards."""
        d = self.domain
        if not d.require_permission(conn, "admin:monitor", "dashboard_save", msg.id):
            return
        if not bytes(msg.configuration).lstrip().startswith(b"{"):
            d.validation_error(conn, "configuration", "configuration must be a JSON object",
                               "Required action: send the dashboard configuration as an object",
                               msg.id)
            return
        store = d.ctx.require_store(conn, "dashboard_save", msg.id)
        if store is None:
            return
        saved = await d.timed_query(store.save_dashboard(
            admin_user_id=conn.user or "", dashboard_name=msg.dashboard_name,
            configuration=msg.configuration, is_default=msg.is_default))
        await self.domain.log_activity(conn, "dashboard_save", "admin_dashboard", str(saved.id),
                                {"dashboard_name": saved.dashboard_name})
        d.reply(conn, DashboardSaved(dashboard=saved, id=msg.id))

    async def dashboard_list(self, conn: Connection, msg: DashboardList) -> None:
        """``dashboard_list``: the admin's saved dashboards."""
        d = self.domain
        if not d.require_permission(conn, "admin:monitor", "dashboard_list", msg.id):
            return
        store = d.ctx.require_store(conn, "dashboard_list", msg.id)
        if store is None:
            return
        dashboards = await d.timed_query(store.list_dashboards(conn.user or ""))
        d.reply(conn, DashboardsReply(dashboards=dashboards, id=msg.id))
