"""Cluster-wide answers of ``/admin/rooms``, ``/admin/connections`` and the per-worker
part of ``/admin/presence``.

Every worker answers an admin query from its own tables (:func:`local_answer`,
the query provider of its embedded bus client). The worker that got the HTTP
request asks the supervisor's hub (:meth:`EmbeddedBus.cluster_query`), which
passes the query to every connected worker and returns their answers after at
most ``workers.collect_timeout``; the workers that did not answer in time (or
are not connected) are named in ``missing``. :class:`ClusterView` merges the
answers: one document with a per-worker breakdown, never a silently partial
one. Without a hub (one process) the answer is this worker's, with
``expected_workers`` 1.

With the Redis bus the query goes through Redis instead
(:mod:`rtserver.bus.redis_admin`): every worker of every node answers, keyed
by its node id, and the expected workers are those registered in Redis
(``scope: "cluster"``); with the hub alone, the workers of this machine
(``scope: "node"``). Every answer names the node of each worker (``nodes``).

Two queries besides the tables: ``status`` (this worker's ``/metrics`` text, health,
node and restarts: the cluster document of every node, :mod:`rtserver.cluster_nodes`)
and ``disconnect`` (close the connection with that id if it is on this worker: an
``admin_disconnect`` by connection id, :meth:`HandlerContext.close_connection_anywhere`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rtserver.bus.base import BusUnavailable
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import node_name
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.node import Node

__all__ = ["ClusterView", "WorkerIdentity", "local_answer", "merge_connections", "merge_rooms"]

log = get_logger("rtserver.admin_cluster")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which node a worker belongs to, and how often its supervisor restarted its id."""

    #: The node (one ``rtserver serve``): ``host:pid`` of its supervisor
    #: (:func:`rtserver.bus.redis_settings.node_name`), or of a process of its own.
    node: str
    #: Restarts of this worker id before this process (0 for a first start).
    restarts: int

    @classmethod
    def own_process(cls) -> WorkerIdentity:
        """A worker without a supervisor: its process is its node, never restarted."""
        return cls(node_name(os.getpid()), 0)


def _local_rooms(node: Node, args: dict[str, Any]) -> dict[str, Any]:
    needle = str(args.get("q", ""))
    limit = int(args["limit"])
    hub = node.hub
    rooms = [(name, len(members)) for name, members in hub.rooms.items()
             if needle in name and not name.startswith("$")]
    rooms.sort(key=lambda item: (-item[1], item[0]))
    out = []
    for name, members in rooms[:limit]:
        position = hub.positions.get(name)
        rate, counted = hub.rates.rate(name)
        out.append([name, members, position[0] if position else None,
                    position[1] if position else None, rate, counted])
    return {"total": len(rooms), "rooms": out}


def _local_connections(node: Node, args: dict[str, Any]) -> dict[str, Any]:
    state, user, conn_id = args.get("state"), args.get("user"), args.get("connection_id")
    conns = [c for c in node.hub.connections.values()
             if (state is None or c.state.value == state)
             and (user is None or c.user == user)
             and (conn_id is None or c.id == conn_id)]
    now = time.monotonic()
    # last_activity is on the monotonic clock: also given as seconds of idleness.
    return {"total": len(conns),
            "connections": [{**c.snapshot(), "worker": node.worker_id,
                             "idle_seconds": round(now - c.session.last_activity, 3)}
                            for c in conns[:int(args["limit"])]]}


def _local_presence(node: Node, args: dict[str, Any]) -> dict[str, Any]:
    return {"members": len(node.hub.rooms.get(str(args["room"]), ()))}


def _local_disconnect(node: Node, args: dict[str, Any]) -> dict[str, Any]:
    conn = node.hub.connections.get(str(args["connection_id"]))
    user = args.get("user")
    if conn is None or (user is not None and conn.user != user):
        return {"closed": False}
    log.info("admin_close", connection_id=conn.id, user=conn.user, code=args["code"],
             reason=args["reason"], by=args["by"])
    node.close_connection(conn, int(args["code"]), str(args["reason"]))
    return {"closed": True, "user": conn.user, "worker": node.worker_id}


_QUERIES = {"rooms": _local_rooms, "connections": _local_connections,
            "presence": _local_presence, "disconnect": _local_disconnect}


def local_answer(node: Node, name: str, args: dict[str, Any],
                 identity: WorkerIdentity) -> dict[str, Any]:
    """This worker's answer to the admin query ``name`` (msgpack-encodable); an unknown
    query is answered with an error, which the merge reports for this worker."""
    if name == "status":
        return {"metrics": REGISTRY.render({"worker": str(node.worker_id)}),
                "health": node.health(), "node": identity.node, "worker": node.worker_id,
                "restarts": identity.restarts}
    query = _QUERIES.get(name)
    if query is None:
        log.error("admin_query_unknown", query=name)
        return {"error": "unknown_query", "message": f"no admin query {name[:40]!r}"}
    answer = query(node, args)
    if name == "disconnect":
        answer["node"] = identity.node
    return answer


def merge_rooms(answers: dict[str, dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """One row per room over every worker's rows: members summed (and by worker), the
    furthest position, the largest rate (each worker with members counts them all)."""
    merged: dict[str, dict[str, Any]] = {}
    for wid, answer in answers.items():
        for name, members, epoch, seq, rate, counted in answer["rooms"]:
            row = merged.get(name)
            if row is None:
                row = merged[name] = {"room": name, "members": 0, "members_by_worker": {},
                                      "epoch": epoch, "last_seq": seq,
                                      "messages_per_second": 0.0, "publications_counted": 0}
            row["members"] += members
            row["members_by_worker"][wid] = members
            if seq is not None and (row["last_seq"] is None or (
                    epoch == row["epoch"] and seq > row["last_seq"])):
                row["epoch"], row["last_seq"] = epoch, seq
            row["messages_per_second"] = max(row["messages_per_second"], rate)
            row["publications_counted"] = max(row["publications_counted"], counted)
    rows = sorted(merged.values(), key=lambda r: (-r["members"], r["room"]))
    return rows[:limit]


def merge_connections(answers: dict[str, dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Every worker's connections, newest first, at most ``limit``."""
    rows = [{**c, "source": wid} for wid, answer in answers.items()
            for c in answer["connections"]]
    rows.sort(key=lambda c: -c["connected_at"])
    return rows[:limit]


class ClusterView:
    """Asks an admin query of every worker (through Redis or the hub) or of this one."""

    def __init__(self, node: Node, worker_id: int, cluster_bus: EmbeddedBus | None,
                 identity: WorkerIdentity) -> None:
        self.node = node
        self.worker_id = worker_id
        self.cluster_bus = cluster_bus
        self.identity = identity
        self.redis = node.bus if isinstance(node.bus, RedisBus) else None
        for bus in (cluster_bus, self.redis):
            if bus is not None:
                bus.set_query_provider(
                    lambda name, args: local_answer(node, name, args, identity))
        # The node's close_connection_anywhere asks every worker through this view.
        node.worker_query = self.ask

    async def ask(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """``{"workers": {id: answer}, "missing": [...], "failed": {id: error},
        "expected_workers": n, "answered_by": id, "scope": ...}``; raises
        :class:`BusUnavailable` when the workers cannot be asked.

        ``scope``: ``cluster`` (Redis: every worker of every node, keyed by node id),
        ``node`` (the hub: every worker of this machine, keyed by worker number) or
        ``process`` (one worker without a hub). ``nodes``: the node of every expected
        worker (with Redis as registered, None when its entry expired)."""
        if self.redis is not None:
            scope = "cluster"
            status = await self.redis.cluster_query(
                name, args, self.node.config.workers.collect_timeout)
        elif self.cluster_bus is not None:
            scope = "node"
            status = await self.cluster_bus.cluster_query(name, args)
        else:
            scope = "process"
            status = {"workers": {str(self.worker_id): local_answer(
                self.node, name, args, self.identity)}, "missing": [], "expected_workers": 1}
        nodes: dict[str, str | None] = (
            dict(status["nodes"]) if scope == "cluster" else
            {wid: self.identity.node for wid in [*status["workers"], *status["missing"]]})
        workers = {wid: a for wid, a in status["workers"].items() if "error" not in a}
        failed = {wid: a for wid, a in status["workers"].items() if "error" in a}
        if status["missing"] or failed:
            log.warning("admin_query_partial", query=name, missing=status["missing"],
                        failed=sorted(failed))
        return {"workers": workers, "missing": list(status["missing"]), "failed": failed,
                "expected_workers": status["expected_workers"], "answered_by": self.worker_id,
                "scope": scope, "nodes": nodes}

    async def history(self, rooms: list[str]) -> dict[str, Any]:
        """The bus's history depth of ``rooms`` and its bounds, or the error (explicit)."""
        try:
            report = await self.node.bus.history_info(rooms)
        except BusUnavailable as exc:
            log.error("admin_history_unavailable", rooms=len(rooms), error=str(exc))
            return {"error": "bus_unavailable", "message": str(exc),
                    "action": "Required action: check the bus; the rooms' history depth is "
                    "unknown until it answers"}
        return {"bounds": {"history_size": report.history_size,
                           "history_max_bytes": report.history_max_bytes,
                           "history_ttl": report.history_ttl},
                "rooms": {r.room: {"held": r.held, "bytes": r.bytes, "first_seq": r.first_seq,
                                   "last_seq": r.last_seq, "epoch": r.epoch}
                          for r in report.rooms if r is not None}}
