"""The console's cluster document, read from the workers' own Prometheus text.

Every worker already answers the hub's status collection with its ``/metrics``
text and its ``/healthz`` document; :func:`cluster_document` turns those into
one JSON document per worker (counters, connections by state, close codes,
errors, the fan-out and publish → delivered latency buckets, CPU and RSS) so that the console reads
exactly what Prometheus scrapes. Counters stay cumulative: the console computes
rates (and the latency quantiles of the last interval) from two reads.
"""

from __future__ import annotations

import os
import re
import resource
import time
from typing import Any

from rtserver.metrics import REGISTRY

__all__ = ["cluster_document", "parse_metrics", "register_process_metrics", "worker_document"]

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

#: Families copied into the document: metric name -> (key, label folded into a dict or None).
_FAMILIES: dict[str, tuple[str, str | None]] = {
    "rtserver_uptime_seconds": ("uptime", None),
    "rtserver_connections": ("connections", "state"),
    "rtserver_messages_in_total": ("messages_in", "type"),
    "rtserver_messages_out_total": ("messages_out", "type"),
    "rtserver_publications_total": ("publications", None),
    "rtserver_fanout_deliveries_total": ("deliveries", None),
    "rtserver_closes_total": ("closes", "code"),
    "rtserver_errors_total": ("errors", "code"),
    "rtserver_slow_consumers_total": ("slow_consumers", None),
    "rtserver_rooms": ("rooms", None),
    "rtserver_subscriptions": ("subscriptions", None),
    "rtserver_bus_up": ("bus_up", None),
    "rtserver_process_cpu_seconds_total": ("cpu_seconds", None),
    "rtserver_process_resident_memory_bytes": ("rss_bytes", None),
}
#: Histograms copied into the document: metric name -> key.
_HISTOGRAMS: dict[str, str] = {
    "rtserver_fanout_latency_seconds": "latency",
    "rtserver_publish_delivery_latency_seconds": "delivery_latency",
}


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def worker_document(metrics_text: str, health: dict[str, Any]) -> dict[str, Any]:
    """One worker's counters, gauges and latency buckets (cumulative, as scraped):
    ``latency`` (fan-out) and ``delivery_latency`` (publish accepted → delivered)."""
    doc: dict[str, Any] = {"health": health}
    for key, label in _FAMILIES.values():
        doc[key] = {} if label is not None else None
    buckets: dict[str, list[tuple[float, float]]] = {}
    for key in _HISTOGRAMS.values():
        doc[key] = {"buckets": [], "count": 0.0, "sum": 0.0}
        buckets[key] = []
    for name, labels, value in parse_metrics(metrics_text):
        family = _FAMILIES.get(name)
        if family is not None:
            key, label = family
            if label is None:
                doc[key] = value
            else:
                doc[key][labels.get(label, "")] = doc[key].get(labels.get(label, ""), 0) + value
            continue
        base, _, part = name.rpartition("_")
        hist = _HISTOGRAMS.get(base)
        if hist is None:
            continue
        if part == "bucket":
            le = labels["le"]
            buckets[hist].append((float("inf") if le == "+Inf" else float(le), value))
        elif part in ("count", "sum"):
            doc[hist][part] = value
    for key, found in buckets.items():
        found.sort()
        # JSON has no infinity: the +Inf bound is sent as null.
        doc[key]["buckets"] = [[None if b == float("inf") else b, n] for b, n in found]
    return doc


def cluster_document(status: dict[str, Any], answered_by: int) -> dict[str, Any]:
    """The console's view of a hub collection (``EmbeddedBus.cluster_status()``)."""
    workers = {wid: worker_document(info["metrics"], info["health"])
               for wid, info in status["workers"].items()}
    restarts: dict[str, float] = {}
    for name, labels, value in parse_metrics(status.get("supervisor_metrics") or ""):
        if name == "rtserver_supervisor_worker_restarts_total":
            restarts[labels.get("worker_id", "")] = value
    for wid, doc in workers.items():
        doc["restarts"] = restarts.get(wid, 0.0)
    return {"server_time": time.time(), "answered_by": answered_by, "workers": workers,
            "missing": list(status["missing"]),
            "expected_workers": status["expected_workers"]}


def _cpu_seconds() -> dict[tuple[str, ...], float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {(): usage.ru_utime + usage.ru_stime}


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> dict[tuple[str, ...], float]:
    with open("/proc/self/statm", "rb") as f:
        return {(): float(int(f.read().split()[1]) * _PAGE)}


def register_process_metrics() -> None:
    """CPU seconds and resident memory of this process, computed at scrape time."""
    REGISTRY.gauge("rtserver_process_cpu_seconds_total",
                   "CPU seconds (user + system) used by this process", collect=_cpu_seconds)
    REGISTRY.gauge("rtserver_process_resident_memory_bytes",
                   "Resident memory of this process (bytes)", collect=_rss_bytes)
