"""``GET /admin/health``: a live snapshot of the node, its database and the domain's streams."""

from __future__ import annotations

import http
import time
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

__all__ = ["admin_health_response", "health_snapshot"]


async def health_snapshot(domain: Domain, admin: AdminStreams, analytics: Analytics,
                          alerts: Alerts) -> dict[str, Any]:
    """System health with live values: node health, a database round trip, domain state."""
    ctx = domain.ctx
    doc = ctx.health()
    store = ctx.store
    database: dict[str, Any]
    if store is None:
        database = {"configured": False, "ok": False,
                    "reason": "no database configured (--database)"}
    else:
        t0 = time.perf_counter()
        try:
            await store.ping()
            latency = round((time.perf_counter() - t0) * 1000.0, 3)
            unresolved = await unresolved_alert_count(store)
            database = {"configured": True, "ok": True, "reason": None,
                        "ping_ms": latency, "unresolved_alerts": unresolved,
                        "pool": msgspec.to_builtins(store.pool_state())}
        except StoreUnavailable as exc:
            database = {"configured": True, "ok": False, "reason": str(exc),
                        "pool": msgspec.to_builtins(store.pool_state())}
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

    It carries no secret but operational detail: expose it only where /metrics is exposed.
    """
    status = http.HTTPStatus.OK if doc["status"] == "ok" else (
        http.HTTPStatus.SERVICE_UNAVAILABLE)
    body = orjson.dumps(doc, default=str)
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)
