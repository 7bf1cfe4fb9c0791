"""Per-node state of the domain handlers and the helpers they share.

:func:`start_domain` creates one :class:`Domain` per node (settings, stream
tables, alert manager, measurement windows); handlers find it with
:func:`domain_of`. Handlers are wrapped by :func:`handler` so that a store or
bus outage becomes an explicit ``error`` frame and every handler's duration
is measured for the performance metrics.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rtserver.bus.base import BusUnavailable
from rtserver.domain_settings import DomainSettings
from rtserver.hub import Connection
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.node import ERRORS, MESSAGES_OUT
from rtserver.protocol.codec import ErrorCode
from rtserver.protocol.messages import MessageId, ServerMessage
from rtserver.router import Handler
from rtserver.store import StoreUnavailable

from .messages import Latency, ValidationFailed

if TYPE_CHECKING:
    from rtserver.node import Node

    from .admin import AdminStreams
    from .alerts import Alerts
    from .analytics import Analytics
    from .quotes import Quotes

__all__ = [
    "Domain",
    "DomainNotStarted",
    "LatencyWindow",
    "domain_of",
    "handler",
    "register_domain",
    "unregister_domain",
]

log = get_logger("rtserver.handlers")

STORE_UNAVAILABLE = "store_unavailable"
VALIDATION_ERROR = "validation_error"
NOT_FOUND = "not_found"

HANDLER_ERRORS = REGISTRY.counter(
    "rtserver_domain_handler_failures_total",
    "Domain messages that failed because the store or the bus was unavailable",
    ("type", "cause"))

TASK_FAILURES = REGISTRY.counter(
    "rtserver_domain_task_failures_total", "Domain streams and tasks that ended with an error")

M = TypeVar("M")


class DomainNotStarted(RuntimeError):
    """A domain message arrived on a node whose start_domain() was not called."""


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
    """The domain handlers' state on one node."""

    def __init__(self, node: Node, settings: DomainSettings) -> None:
        settings.validate()
        self.node = node
        self.settings = settings
        size = settings.latency_samples
        self.handler_latency = LatencyWindow(size)
        self.publish_latency = LatencyWindow(size)
        self.query_latency = LatencyWindow(size)
        self.loop_lag = LatencyWindow(size)
        self.tasks: set[asyncio.Task[Any]] = set()
        # Filled by start_domain (each module builds its part).
        self.quotes: Quotes
        self.analytics: Analytics
        self.admin: AdminStreams
        self.alerts: Alerts

    # ------------------------------------------------------------ replies

    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn`` (counted like the node's replies)."""
        self.node.reply(conn, message)

    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId) -> None:
        """An ``error`` frame (``action`` must start with "Required action:")."""
        self.node.error(conn, code, message, action, msg_id)

    def error_frame(self, conn: Connection, frame: ServerMessage, code: str) -> None:
        """Send an ``error``-tagged frame with extra fields, counted and logged by ``code``."""
        ERRORS.inc(code)
        MESSAGES_OUT.inc("error")
        if log.enabled(20):
            log.info("client_error", connection_id=conn.id, user=conn.user, code=code)
        self.node.send_to_connection(conn.id, frame)

    def validation_error(self, conn: Connection, field: str, message: str, action: str,
                         msg_id: MessageId) -> None:
        """``error`` with code ``validation_error`` naming ``field``."""
        self.error_frame(conn, ValidationFailed(code="validation_error", field=field,
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
        """``node.send_to_room`` with its duration measured (raises BusUnavailable)."""
        t0 = time.perf_counter()
        try:
            return await self.node.send_to_room(room, message, exclude=exclude)
        finally:
            self.publish_latency.add(time.perf_counter() - t0)

    async def timed_query(self, op: Awaitable[M]) -> M:
        """Await a store call with its duration measured."""
        t0 = time.perf_counter()
        try:
            return await op
        finally:
            self.query_latency.add(time.perf_counter() - t0)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A task named ``rtserver-domain-{name}``, cancelled by :meth:`close` at the latest.

        A task that fails is logged and counted (``rtserver_domain_task_failures_total``).
        """
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            coro, name=f"rtserver-domain-{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            TASK_FAILURES.inc()
            log.error("domain_task_failed", task=task.get_name(), error=repr(exc),
                      action="report it: this stream stopped")

    async def cancel_tasks(self) -> None:
        """Cancel every remaining domain task and wait for them."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_DOMAINS: weakref.WeakKeyDictionary[Node, Domain] = weakref.WeakKeyDictionary()


def register_domain(domain: Domain) -> None:
    """Make ``domain`` the node's domain state (start_domain)."""
    if domain.node in _DOMAINS:
        raise RuntimeError("start_domain() called twice for one node. Required action: call "
                           "it once per node, after RtServer.start()")
    _DOMAINS[domain.node] = domain


def unregister_domain(node: Node) -> Domain | None:
    """Forget the node's domain state (stop_domain)."""
    return _DOMAINS.pop(node, None)


def domain_of(node: Node) -> Domain:
    """The node's domain state; raises :class:`DomainNotStarted`."""
    domain = _DOMAINS.get(node)
    if domain is None:
        raise DomainNotStarted(
            "the domain handlers are installed but start_domain() was not called for this "
            "node. Required action: call rtserver.handlers.start_domain(node, settings) after "
            "RtServer.start()")
    return domain


def maybe_domain(node: Node) -> Domain | None:
    """The node's domain state, or None (hooks on nodes without domain)."""
    return _DOMAINS.get(node)


def _tag(message: object) -> str:
    return str(type(message).__struct_config__.tag)  # type: ignore[attr-defined]


def handler(fn: Callable[[Domain, Connection, Any], Awaitable[None]]) -> Handler:
    """Adapt ``fn(domain, conn, message)`` to a router handler.

    A missing domain, an unavailable store or bus become ``error`` frames
    (plus a log line and ``rtserver_domain_handler_failures_total``).
    """

    async def run(node: Node, conn: Connection, message: Any) -> None:
        msg_id = getattr(message, "id", None)
        domain = _DOMAINS.get(node)
        if domain is None:
            HANDLER_ERRORS.inc(_tag(message), "domain_not_started")
            log.error("domain_not_started", type=_tag(message),
                      action="call rtserver.handlers.start_domain(node, settings) at start")
            node.error(conn, ErrorCode.INTERNAL_ERROR,
                       "the server's domain handlers are not started",
                       "Required action: report this server misconfiguration to its operator",
                       msg_id)
            return
        t0 = time.perf_counter()
        try:
            await fn(domain, conn, message)
        except StoreUnavailable as exc:
            HANDLER_ERRORS.inc(_tag(message), "store")
            log.error("domain_store_unavailable", type=_tag(message), error=str(exc))
            domain.error(conn, STORE_UNAVAILABLE, f"the database is unavailable: {exc}",
                         "Required action: retry with backoff; the server reconnects to its "
                         "database", msg_id)
        except BusUnavailable as exc:
            HANDLER_ERRORS.inc(_tag(message), "bus")
            log.error("domain_bus_unavailable", type=_tag(message), error=str(exc))
            domain.error(conn, ErrorCode.BUS_UNAVAILABLE,
                         f"the message bus is unavailable: {exc}",
                         "Required action: retry with backoff; the server is reconnecting to "
                         "its bus", msg_id)
        finally:
            domain.handler_latency.add(time.perf_counter() - t0)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run
