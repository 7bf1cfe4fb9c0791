"""``GET /admin/health``: a live snapshot of the node, its database and the domain's streams."""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from rtserver.context import StoreUnavailable

from .admin import MONITORING, PERFORMANCE, USER_ACTIVITY, AdminStreams
from .alerts import Alerts
from .analytics import Analytics
from .domain import Domain
from .queries import unresolved_alert_count

__all__ = ["SnapshotCache", "admin_health_response", "database_state", "health_snapshot"]


class SnapshotCache:
    """One document (the database part of ``/admin/health``) kept for ``seconds``;
    concurrent requests while it is computed share the same computation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._doc: dict[str, Any] | None = None
        self._taken_at = 0.0
        self._running: asyncio.Future[dict[str, Any]] | None = None
        #: Snapshots computed (each one is a database round trip): for tests and health.
        self.computed = 0

    async def get(self, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """The cached document, or a new one when it is older than ``seconds``."""
        now = time.monotonic()
        if self._doc is not None and now - self._taken_at < self.seconds:
            return {**self._doc, "cached_for": round(now - self._taken_at, 3)}
        if self._running is not None:
            return await asyncio.shield(self._running)
        running = self._running = asyncio.get_running_loop().create_future()
        try:
            doc = await compute()
        except Exception as exc:
            running.set_exception(exc)
            running.exception()  # retrieved: the waiters and this caller get it raised
            raise
        except BaseException:
            running.cancel()
            raise
        finally:
            self._running = None
        self.computed += 1
        self._doc, self._taken_at = doc, time.monotonic()
        running.set_result(doc)
        return {**doc, "cached_for": 0.0}


async def database_state(domain: Domain) -> dict[str, Any]:
    """The database part of the snapshot: a round trip and the unresolved alert count."""
    store = domain.ctx.store
    if store is None:
        return {"configured": False, "ok": False, "reason": "no database configured (--database)"}
    t0 = time.perf_counter()
    try:
        await store.ping()
        latency = round((time.perf_counter() - t0) * 1000.0, 3)
        unresolved = await unresolved_alert_count(store)
        return {"configured": True, "ok": True, "reason": None, "ping_ms": latency,
                "unresolved_alerts": unresolved,
                "pool": msgspec.to_builtins(store.pool_state())}
    except StoreUnavailable as exc:
        return {"configured": True, "ok": False, "reason": str(exc),
                "pool": msgspec.to_builtins(store.pool_state())}


async def health_snapshot(domain: Domain, admin: AdminStreams, analytics: Analytics,
                          alerts: Alerts, cache: SnapshotCache | None = None) -> dict[str, Any]:
    """System health with live values: node health, the database (its queries run at most
    once per ``cache.seconds`` when a cache is given), domain state."""
    ctx = domain.ctx
    doc = ctx.health()
    store = ctx.store
    if cache is None:
        database = await database_state(domain)
    else:
        database = await cache.get(lambda: database_state(domain))
    doc["database"] = database
    doc["domain"] = {
        "started": True,
        "analytics_streams": len(analytics.streams),
        "analytics_intervals_computed": analytics.computed,
        "analytics_intervals_skipped": analytics.skipped,
        "monitoring_streams": admin.count(MONITORING),
        "user_activity_streams": admin.count(USER_ACTIVITY),
        "performance_streams": admin.count(PERFORMANCE),
        "alerts_pending_storage": len(alerts.pending),
        "handler_latency_ms": msgspec.to_builtins(domain.handler_latency.summary()),
        "event_loop_lag_ms": msgspec.to_builtins(domain.loop_lag.summary()),
    }
    stats = ctx.stats()
    doc["fanout_stats"] = stats.fanout
    doc["slow_consumers_total"] = int(stats.slow_consumers)
    doc["errors_total"] = int(stats.errors)
    if store is not None and not database["ok"]:
        doc["status"] = "degraded"
        doc["reasons"] = {**doc["reasons"], "database": database["reason"]}
    return doc


def admin_health_response(doc: dict[str, Any]) -> Response:
    """``GET /admin/health``: 200 with the JSON snapshot when healthy, 503 when degraded.

    Operational detail: the core's admin gate requires a token with ``admin:monitor``.
    """
    status = http.HTTPStatus.OK if doc["status"] == "ok" else (
        http.HTTPStatus.SERVICE_UNAVAILABLE)
    body = orjson.dumps(doc, default=str)
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)
