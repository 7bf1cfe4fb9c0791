"""The narrow API a domain's handlers get: :class:`HandlerContext`.

A domain plugin (:mod:`rtserver.plugin`) never imports the node, the hub or a
bus. Everything it may do goes through this interface, implemented by the
node: send to a connection, a user, a room or everyone; subscribe and
unsubscribe a connection (access rules and the subscription limit are checked
inside, once); the store (``require_store`` answers ``feature_unavailable``
explicitly); supervised tasks; metrics; read-only statistics.

Failures a handler lets propagate are mapped by the node's one wrapper
(``guarded``): :class:`StoreUnavailable` → ``store_unavailable``,
:class:`BusUnavailable` → ``bus_unavailable``, anything else →
``internal_error``, each logged and counted.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import BusHealth, BusUnavailable
from rtserver.config import Config, NamespaceConfig
from rtserver.connection import Connection, ConnState
from rtserver.metrics import Counter, Gauge
from rtserver.protocol.messages import MessageId, ServerMessage
from rtserver.store.postgres import StoreUnavailable
from rtserver.tasks import TaskFailure

if TYPE_CHECKING:
    from rtserver.auth import Principal
    from rtserver.store.postgres import Store

__all__ = [
    "BusUnavailable",
    "ConnState",
    "Connection",
    "HandlerContext",
    "NodeStats",
    "RemoteClose",
    "StoreUnavailable",
    "TaskFailure",
]

class NodeStats(msgspec.Struct, frozen=True):
    """This worker's numbers, as admin streams show them (no I/O to read)."""

    worker: int
    uptime: float
    connections: int
    connections_by_state: dict[str, int]
    rooms: int
    subscriptions: int
    messages_in: float
    messages_out: float
    publications: float
    deliveries: float
    errors: float
    errors_by_code: dict[str, int]
    slow_consumers: float
    fanout: dict[str, int]
    degraded: dict[str, str]
    bus: BusHealth


class RemoteClose(msgspec.Struct, frozen=True):
    """The outcome of :meth:`HandlerContext.close_connection_anywhere`."""

    #: The worker that closed the connection (its key in admin answers: a worker number,
    #: or a Redis node id), None when no worker that answered holds it.
    closed_by: str | None
    #: That worker's node (``host:supervisor pid``), None when not closed.
    node: str | None
    #: The closed connection's user (None: anonymous, or not closed).
    user: str | None
    #: Workers expected to answer that did not within ``workers.collect_timeout``.
    missing: list[str]
    #: Workers that answered with an error.
    failed: list[str]
    expected_workers: int
    #: ``cluster`` (every node, Redis), ``node`` (this machine's workers) or ``process``.
    scope: str


#: Asks every worker an admin query: ``(name, args) -> answers`` (the shape of
#: :meth:`rtserver.admin_cluster.ClusterView.ask`).
WorkerQuery = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class HandlerContext(abc.ABC):
    """What a domain may do on one node (implemented by :class:`rtserver.node.Node`)."""

    worker_id: int
    config: Config
    #: Installed by the server layer (``rtserver.admin_cluster.ClusterView``); None until
    #: then, and :meth:`close_connection_anywhere` raises :class:`BusUnavailable`.
    worker_query: WorkerQuery | None = None

    # ------------------------------------------------------------ store

    @property
    @abc.abstractmethod
    def store(self) -> Store | None:
        """The PostgreSQL store, or ``None`` when the server runs without a database."""

    @abc.abstractmethod
    def require_store(self, conn: Connection, feature: str, msg_id: MessageId) -> Store | None:
        """The store, or ``None`` after answering ``feature_unavailable`` to ``conn``."""

    # ------------------------------------------------------------ sending

    @abc.abstractmethod
    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn`` (ordered with everything else sent to it)."""

    @abc.abstractmethod
    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId = None, room: str | None = None) -> None:
        """Send an ``error`` frame (``action`` starts with "Required action:"), log, count."""

    @abc.abstractmethod
    def error_frame(self, conn: Connection, frame: ServerMessage, code: str) -> None:
        """Send an ``error``-tagged frame with extra fields, logged and counted by ``code``."""

    @abc.abstractmethod
    def send_to_connection(self, connection_id: str, message: ServerMessage | bytes) -> bool:
        """Send to one local connection; ``False`` when it is not on this worker."""

    @abc.abstractmethod
    def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Close one local connection with ``code`` and ``reason`` (logged as ``closing``)."""

    async def close_connection_anywhere(self, connection_id: str, code: int, reason: str, *,
                                        user: str | None, by: str) -> RemoteClose:
        """Close the connection ``connection_id`` (of ``user``, when given) on whichever
        worker of the node (embedded hub) or cluster (Redis) holds it. Every worker is
        asked and answers within ``workers.collect_timeout``; the outcome says who closed
        it, or that nobody did and which workers did not answer. Raises
        :class:`BusUnavailable` when the workers cannot be asked."""
        if self.worker_query is None:
            raise BusUnavailable("no worker query is installed on this node (it runs "
                                 "outside rtserver.server.RtServer)")
        doc = await self.worker_query("disconnect", {
            "connection_id": connection_id, "user": user, "code": code, "reason": reason,
            "by": by})
        closed = sorted(wid for wid, answer in doc["workers"].items() if answer["closed"])
        wid = closed[0] if closed else None
        return RemoteClose(
            closed_by=wid, node=doc["workers"][wid]["node"] if wid is not None else None,
            user=doc["workers"][wid]["user"] if wid is not None else None,
            missing=list(doc["missing"]), failed=sorted(doc["failed"]),
            expected_workers=int(doc["expected_workers"]), scope=str(doc["scope"]))

    @abc.abstractmethod
    async def send_to_user(self, user: str, message: ServerMessage | bytes) -> None:
        """Send to every connection of ``user`` on every worker and node."""

    @abc.abstractmethod
    async def send_to_room(self, room: str, message: ServerMessage | bytes,
                           exclude: Connection | None = None, *, key: str | None = None) -> int:
        """Publish to ``room`` everywhere; returns the assigned seq (raises BusUnavailable).

        ``key``: applied once within ``bus.idempotency_window`` (a retry returns the
        original seq)."""

    @abc.abstractmethod
    async def broadcast(self, message: ServerMessage | bytes) -> None:
        """Send to every connection on every worker and node."""

    # ------------------------------------------------------------ rooms

    @abc.abstractmethod
    async def subscribe(self, conn: Connection, rooms: Sequence[str], msg_id: MessageId,
                        *, access_checked: bool = False) -> bool:
        """Join ``conn`` to every room of ``rooms`` it is not in yet.

        The namespace rules (``subscribe`` permission, unless the domain checked
        access itself and passes ``access_checked=True``) and the subscription
        limit are checked here, once, before joining anything; a refusal or a
        bus failure is answered to ``conn``. Each joined room is confirmed with
        ``subscribed``. ``True`` when ``conn`` is in every room.
        """

    @abc.abstractmethod
    async def unsubscribe(self, conn: Connection, room: str) -> None:
        """Leave ``room`` (hooks and presence as for a client ``unsubscribe``)."""

    @abc.abstractmethod
    def room_rules(self, room: str) -> NamespaceConfig:
        """The namespace rules of ``room``; raises ``AccessDenied`` for an invalid name."""

    @abc.abstractmethod
    def check_access(self, principal: Principal, action: Literal["subscribe", "publish"],
                     room: str) -> NamespaceConfig:
        """Check ``action`` on ``room`` for ``principal``; raises ``AccessDenied``."""

    # ------------------------------------------------------------ tasks, metrics, stats

    @abc.abstractmethod
    def spawn(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, *,
              restart: BackoffPolicy | None = None,
              on_failure: TaskFailure | None = None) -> asyncio.Task[None]:
        """Run ``factory()`` as a supervised task, cancelled at node shutdown at the latest.

        A failure is logged and counted (``rtserver_task_failures_total``), then
        ``on_failure(exc, failures)`` is called (to tell the task's viewers), and
        with ``restart`` the task is started again after ``restart.delay(n)``.
        """

    @abc.abstractmethod
    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        """Register (or get) a counter exported on ``/metrics``."""

    @abc.abstractmethod
    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = (), *,
              collect: Callable[[], dict[tuple[str, ...], float]]) -> Gauge:
        """Register a gauge whose values ``collect()`` returns at scrape time."""

    @abc.abstractmethod
    def stats(self) -> NodeStats:
        """This worker's counters and tables, read in place."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """This worker's ``/healthz`` document."""

    @abc.abstractmethod
    def connection(self, connection_id: str) -> Connection | None:
        """The local connection with that id, if it is on this worker."""
