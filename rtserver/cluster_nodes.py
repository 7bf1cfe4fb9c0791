"""The console's cluster document over every node: workers grouped by node.

:func:`collect_nodes` is what ``GET /admin/cluster`` and the ``start_cluster``
pushes (:class:`rtserver.cluster_feed.ClusterFeed`) read:

* **Redis bus**: the admin query ``status`` through Redis
  (:mod:`rtserver.bus.redis_admin`): every worker of every node (every
  ``rtserver serve`` sharing the Redis key prefix) answers with its ``/metrics``
  text, health, node and restarts; the workers registered in Redis that do not
  answer within ``workers.collect_timeout`` are named in ``missing``, each under
  its node in ``nodes``, and a node none of whose workers answered is named in
  ``missing_nodes``. Workers are keyed by their Redis node id.
* **Embedded hub / one process**: the hub's collection of this machine's workers
  (:func:`rtserver.cluster_feed.collect_cluster`), all of them on this node.

Either way each worker's document carries ``node`` and ``worker`` (its number on
its node), and the document carries ``nodes`` (node -> ``workers``, ``missing``,
``failed``), ``missing_nodes``, ``scope`` and ``answered_by_node``. One
collection per call: the feed calls it once per interval per worker with watchers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rtserver.admin_cluster import ClusterView
from rtserver.admin_status import cluster_document, worker_document
from rtserver.bus.base import BusUnavailable
from rtserver.cluster_feed import collect_cluster
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["UNKNOWN_NODE", "collect_nodes", "group_by_node"]

log = get_logger("rtserver.cluster_nodes")

#: The node of a worker that did not answer and whose Redis registration carries none
#: (its entry expired between the two reads).
UNKNOWN_NODE = "unknown"


def group_by_node(answered: dict[str, str], missing: list[str], failed: list[str],
                  nodes_of: dict[str, str | None]) -> tuple[dict[str, Any], list[str]]:
    """``({node: {"workers", "missing", "failed"}}, [nodes none of whose workers
    answered])`` from the node of each answering worker (``answered``: id -> node) and
    the registered node of the others (``nodes_of``)."""
    nodes: dict[str, dict[str, list[str]]] = {}

    def slot(node: str | None) -> dict[str, list[str]]:
        return nodes.setdefault(node or UNKNOWN_NODE,
                                {"workers": [], "missing": [], "failed": []})

    for wid, node in answered.items():
        slot(node)["workers"].append(wid)
    for wid in missing:
        slot(nodes_of.get(wid))["missing"].append(wid)
    for wid in failed:
        slot(nodes_of.get(wid))["failed"].append(wid)
    for group in nodes.values():
        for ids in group.values():
            ids.sort()
    return nodes, sorted(n for n, g in nodes.items() if not g["workers"])


async def collect_nodes(view: ClusterView,
                        health: Callable[[], dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """``(True, the cluster document of every node)``, or ``(False, the 503 document)``
    when the workers cannot be asked (``error``, ``message``, ``action``, this worker's
    own view in ``worker`` and its key among the ``workers`` of a full document in
    ``worker_key``)."""
    identity = view.identity
    if view.redis is None:
        ok, doc = await collect_cluster(view.cluster_bus, view.worker_id, health)
        if ok:
            for wid, worker in doc["workers"].items():
                worker["node"], worker["worker"] = identity.node, int(wid)
            nodes, missing_nodes = group_by_node(
                dict.fromkeys(doc["workers"], identity.node), doc["missing"], [],
                dict.fromkeys(doc["missing"], identity.node))
            doc.update(nodes=nodes, missing_nodes=missing_nodes,
                       scope="node" if view.cluster_bus is not None else "process",
                       answered_by_node=identity.node)
        else:
            doc["worker"].update(node=identity.node, worker=view.worker_id)
            doc.update(worker_key=str(view.worker_id), answered_by_node=identity.node)
        return ok, doc
    try:
        status = await view.ask("status", {})
    except BusUnavailable as exc:
        log.error("admin_cluster_unavailable", error=str(exc), bus="redis")
        own = worker_document(REGISTRY.render({"worker": str(view.worker_id)}), health())
        own.update(node=identity.node, worker=view.worker_id,
                   restarts=float(identity.restarts))
        return False, {
            "error": "bus_unavailable",
            "message": f"the workers of the cluster cannot be asked through Redis: {exc}",
            "action": "Required action: check Redis; this worker's own view is in 'worker'",
            "answered_by": view.worker_id, "answered_by_node": identity.node,
            "server_time": time.time(), "worker": own,
            "worker_key": view.redis.settings.node_id}
    workers: dict[str, Any] = {}
    for wid, answer in status["workers"].items():
        doc = worker_document(answer["metrics"], answer["health"])
        doc.update(node=answer["node"], worker=answer["worker"],
                   restarts=float(answer["restarts"]))
        workers[wid] = doc
    nodes, missing_nodes = group_by_node({wid: w["node"] for wid, w in workers.items()},
                                         status["missing"], sorted(status["failed"]),
                                         status["nodes"])
    if missing_nodes:
        log.warning("admin_cluster_nodes_missing", nodes=missing_nodes)
    base = cluster_document({"workers": {}, "missing": status["missing"],
                             "expected_workers": status["expected_workers"]}, view.worker_id)
    return True, {**base, "workers": workers, "failed": status["failed"], "nodes": nodes,
                  "missing_nodes": missing_nodes, "scope": "cluster",
                  "answered_by_node": identity.node}
