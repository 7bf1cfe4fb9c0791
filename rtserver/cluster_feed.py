"""The console's cluster document: collected once per interval, pushed to every watcher.

``GET /admin/cluster`` (rtserver/admin_http.py) and the ``start_cluster`` stream
both read the document through :func:`collect_cluster`: the hub's collection
of every worker's ``/metrics`` text and health (or this worker's own, without a
hub), turned into JSON by :func:`rtserver.admin_status.cluster_document`.

:class:`ClusterFeed` (one per worker) runs **one** collection every
``admin.refresh_seconds`` while at least one connection of this worker watches,
however many do: the document is encoded once and the same bytes go to every
watcher through the fan-out core (``cluster_status`` frames, the
``/admin/cluster`` document with ``"type"`` added). The task stops when the last
watcher stops or closes. A new watcher gets the latest document at once.
When the hub cannot answer, the push is the 503 document of ``/admin/cluster``
(``error: bus_unavailable`` with this worker's own view in ``worker``), so the
console says so; a collection failing for any other reason is a bug: every
watcher gets an ``error`` frame (``internal_error``, send ``start_cluster``
again), logged and counted as a task failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from rtserver.admin_status import cluster_document, worker_document
from rtserver.bus.base import BusUnavailable
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.connection import Connection
from rtserver.core_metrics import MESSAGES_OUT
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.node import Node
from rtserver.protocol.codec import ErrorCode
from rtserver.protocol.messages import MessageId, ServerMessage, StartCluster, StopCluster
from rtserver.router import Router

__all__ = ["ClusterFeed", "ClusterStarted", "ClusterStopped", "collect_cluster"]

log = get_logger("rtserver.cluster_feed")

#: The permission of the stream (the same as every admin route's).
PERMISSION = "admin:monitor"

COLLECTIONS = REGISTRY.counter(
    "rtserver_admin_cluster_collections_total",
    "Cluster documents collected for the console's pushes (one per interval per worker with "
    "watchers), by outcome", ("outcome",))
PUSHES = REGISTRY.counter(
    "rtserver_admin_cluster_pushes_total", "cluster_status frames sent to watching consoles")


class ClusterStarted(ServerMessage, tag="cluster_started", frozen=True):
    """``start_cluster`` is running: a ``cluster_status`` every ``interval`` seconds."""

    interval: float
    id: MessageId = None


class ClusterStopped(ServerMessage, tag="cluster_stopped", frozen=True):
    """Answer to ``stop_cluster``."""

    was_running: bool
    id: MessageId = None


def _local_metrics(worker_id: int) -> str:
    return REGISTRY.render({"worker": str(worker_id)})


async def collect_cluster(cluster_bus: EmbeddedBus | None, worker_id: int,
                          health: Callable[[], dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """``(True, document)`` of every worker, or ``(False, the 503 document)`` when the hub
    cannot answer (``error``, ``message``, ``action`` and this worker's own view)."""
    if cluster_bus is None:
        status: dict[str, Any] = {
            "workers": {str(worker_id): {"metrics": _local_metrics(worker_id),
                                         "health": health()}},
            "missing": [], "expected_workers": 1, "supervisor_metrics": ""}
        return True, cluster_document(status, worker_id)
    try:
        status = await cluster_bus.cluster_status()
    except BusUnavailable as exc:
        log.error("admin_cluster_unavailable", error=str(exc))
        return False, {
            "error": "bus_unavailable",
            "message": f"the cluster status cannot be collected: {exc}",
            "action": "Required action: check the supervisor's bus hub; this worker's own "
            "view is in 'worker'",
            "answered_by": worker_id, "server_time": time.time(),
            "worker": worker_document(_local_metrics(worker_id), health())}
    return True, cluster_document(status, worker_id)


class ClusterFeed:
    """The ``start_cluster`` / ``stop_cluster`` stream of one worker."""

    def __init__(self, node: Node, interval: float,
                 collect: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]) -> None:
        self.node = node
        self.interval = interval
        self._collect = collect
        #: Watching connections of this worker, by id.
        self.watchers: dict[str, Connection] = {}
        self._task: asyncio.Task[None] | None = None
        #: The latest ``cluster_status`` frame (sent at once to a new watcher).
        self._last: bytes | None = None

    def install(self, router: Router) -> None:
        """Register the stream's messages and its disconnect hook on the node's router."""
        router.register(StartCluster, self.start)
        router.register(StopCluster, self.stop)
        router.on_disconnect(self.forget)

    async def start(self, conn: Connection, msg: StartCluster) -> None:
        """``start_cluster``: ``cluster_started``, then a ``cluster_status`` per interval."""
        principal = conn.principal
        if principal is None or not principal.has(PERMISSION):
            self.node.error(conn, ErrorCode.FORBIDDEN,
                            f"start_cluster needs the {PERMISSION} permission",
                            f"Required action: connect with a token that holds {PERMISSION}",
                            msg.id)
            return
        self.watchers[conn.id] = conn
        self.node.reply(conn, ClusterStarted(interval=self.interval, id=msg.id))
        if self._task is None:
            self._task = self.node.spawn(self._run, "admin-cluster-feed",
                                         on_failure=self._failed)
        elif self._last is not None:
            MESSAGES_OUT.inc("cluster_status")
            PUSHES.inc()
            self.node.fanout.send(conn.sink, self._last)

    async def stop(self, conn: Connection, msg: StopCluster) -> None:
        """``stop_cluster``: this connection gets no more pushes."""
        was_running = self._drop(conn.id)
        self.node.reply(conn, ClusterStopped(was_running=was_running, id=msg.id))

    async def forget(self, conn: Connection) -> None:
        """A connection closed: it watches no more."""
        self._drop(conn.id)

    async def close(self) -> None:
        """Stop the task (server shutdown)."""
        self.watchers.clear()
        task, self._task, self._last = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _drop(self, conn_id: str) -> bool:
        was = self.watchers.pop(conn_id, None) is not None
        if was and not self.watchers and self._task is not None:
            # Nobody watches on this worker: no more collections.
            self._task.cancel()
            self._task = None
            self._last = None
        return was

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.watchers:
            ok, doc = await self._collect()
            COLLECTIONS.inc("ok" if ok else "bus_unavailable")
            # The /admin/cluster document with its type: encoded once for every watcher.
            payload = b'{"type":"cluster_status",' + msgspec.json.encode(doc)[1:]
            self._last = payload
            n = self.node.fanout.send_many([c.sink for c in self.watchers.values()], payload)
            MESSAGES_OUT.inc("cluster_status", amount=n)
            PUSHES.inc(amount=n)
            now = loop.time()
            next_at += self.interval
            if next_at < now:  # a collection slower than the interval: the next one now
                next_at = now
            await asyncio.sleep(next_at - now)

    def _failed(self, exc: BaseException, failures: int) -> None:
        watchers = list(self.watchers.values())
        self.watchers.clear()
        self._task = None
        self._last = None
        for conn in watchers:
            self.node.error(conn, ErrorCode.INTERNAL_ERROR,
                            f"the cluster pushes stopped: {exc!r}",
                            "Required action: send start_cluster again; report the error if "
                            "it repeats")
