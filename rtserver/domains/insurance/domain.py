"""Per-node state of the insurance domain and the helpers its parts share.

:class:`InsuranceDomain` (the plugin, ``__init__.py``) creates one
:class:`Domain` per node (settings, the handler context, measurement windows);
the parts (quotes, analytics, admin streams, alerts, notifications) hold a
reference to it (never the plugin's). :meth:`Domain.bind` turns a part's
method into a router handler with its duration measured; errors are mapped by
the node's one wrapper (store / bus unavailable, bugs), never here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from rtserver.backoff import BackoffPolicy
from rtserver.context import Connection, HandlerContext, StoreUnavailable
from rtserver.domain_settings import DomainSettings
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.codec import ErrorCode
from rtserver.protocol.messages import MessageId, ServerMessage
from rtserver.router import Handler
from rtserver.tasks import TaskFailure

from .messages import Latency, ValidationFailed

__all__ = [
    "Domain",
    "LatencyWindow",
    "remote_ip",
]

log = get_logger("rtserver.domains.insurance")

STORE_UNAVAILABLE = "store_unavailable"
VALIDATION_ERROR = "validation_error"
NOT_FOUND = "not_found"

M = TypeVar("M")

ACTIVITY_LOG_FAILURES = REGISTRY.counter(
    "rtserver_admin_activity_log_failures_total",
    "Admin actions done but not recorded in admin_activity_logs (database unavailable)")


def remote_ip(remote: str) -> str | None:
    """The address part of a connection's ``host:port`` (None when unknown)."""
    if remote == "unknown" or ":" not in remote:
        return None
    host = remote.rsplit(":", 1)[0]
    return host.strip("[]") or None


class LatencyWindow:
    """The latest ``size`` durations (seconds) of one operation, for percentiles."""

    __slots__ = ("samples", "total")

    def __init__(self, size: int) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.total = 0

    def add(self, seconds: float) -> None:
        """Record one duration."""
        self.samples.append(seconds)
        self.total += 1

    def summary(self) -> Latency:
        """Percentiles in milliseconds (None when nothing was measured)."""
        if not self.samples:
            return Latency(count=0, p50=None, p95=None, p99=None, max=None)
        data = sorted(self.samples)
        n = len(data)

        def pct(p: float) -> float:
            return round(data[min(n - 1, int(p * n))] * 1000.0, 3)

        return Latency(count=n, p50=pct(0.50), p95=pct(0.95), p99=pct(0.99),
                       max=round(data[-1] * 1000.0, 3))


class Domain:
    """The insurance domain's state on one node."""

    def __init__(self, ctx: HandlerContext, settings: DomainSettings) -> None:
        settings.validate()
        self.ctx = ctx
        self.settings = settings
        size = settings.latency_samples
        self.handler_latency = LatencyWindow(size)
        self.publish_latency = LatencyWindow(size)
        self.query_latency = LatencyWindow(size)
        self.loop_lag = LatencyWindow(size)
        self.tasks: set[asyncio.Task[None]] = set()

    def bind(self, fn: Callable[[Connection, Any], Awaitable[None]]) -> Handler:
        """``fn(conn, message)`` (a part's method) as a router handler, its duration
        measured."""

        async def run(conn: Connection, message: Any) -> None:
            t0 = time.perf_counter()
            try:
                await fn(conn, message)
            finally:
                self.handler_latency.add(time.perf_counter() - t0)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    # ------------------------------------------------------------ replies

    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn`` (counted like the node's replies)."""
        self.ctx.reply(conn, message)

    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId) -> None:
        """An ``error`` frame (``action`` must start with "Required action:")."""
        self.ctx.error(conn, code, message, action, msg_id)

    def validation_error(self, conn: Connection, field: str, message: str, action: str,
                         msg_id: MessageId) -> None:
        """``error`` with code ``validation_error`` naming ``field``."""
        self.ctx.error_frame(conn, ValidationFailed(code="validation_error", field=field,
                                                    message=message, action=action, id=msg_id),
                             VALIDATION_ERROR)

    def require_permission(self, conn: Connection, permission: str, what: str,
                           msg_id: MessageId) -> bool:
        """True when ``conn`` holds ``permission``; else answers ``forbidden``."""
        p = conn.principal
        if p is not None and p.has(permission):
            return True
        self.error(conn, ErrorCode.FORBIDDEN, f"{what} needs permission {permission}",
                   f"Required action: use a token whose perms include {permission}", msg_id)
        return False

    async def publish(self, room: str, message: ServerMessage | bytes,
                      exclude: Connection | None = None) -> int:
        """``ctx.send_to_room`` with its duration measured (raises BusUnavailable)."""
        t0 = time.perf_counter()
        try:
            return await self.ctx.send_to_room(room, message, exclude=exclude)
        finally:
            self.publish_latency.add(time.perf_counter() - t0)

    async def timed_query(self, op: Awaitable[M]) -> M:
        """Await a store call with its duration measured."""
        t0 = time.perf_counter()
        try:
            return await op
        finally:
            self.query_latency.add(time.perf_counter() - t0)

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, *,
              restart: BackoffPolicy | None = None,
              on_failure: TaskFailure | None = None) -> asyncio.Task[None]:
        """A supervised task named ``rtserver-domain-{name}`` (see ``HandlerContext.spawn``),
        cancelled by :meth:`cancel_tasks` at the latest."""
        task = self.ctx.spawn(factory, f"rtserver-domain-{name}", restart=restart,
                              on_failure=on_failure)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def log_activity(self, conn: Connection, action: str, resource_type: str | None,
                           resource_id: str | None, details: object) -> None:
        """Record an admin action in admin_activity_logs (failure logged and counted)."""
        store = self.ctx.store
        if store is None:
            return
        try:
            await store.log_admin_activity(
                admin_user_id=conn.user or "", action=action, resource_type=resource_type,
                resource_id=resource_id, status="success", details=details,
                ip_address=remote_ip(conn.remote), user_agent=conn.user_agent or None)
        except StoreUnavailable as exc:
            ACTIVITY_LOG_FAILURES.inc()
            log.error("admin_activity_not_logged", action=action, user=conn.user,
                      error=str(exc), action_required="check the database")

    async def cancel_tasks(self) -> None:
        """Cancel every remaining domain task and wait for them."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
