"""The cluster ``/metrics`` and ``/healthz`` of the supervisor: merging every worker's
Prometheus text and health as collected by the embedded bus server."""

from __future__ import annotations

from typing import Any

__all__ = ["cluster_health_doc", "cluster_metrics_text", "merge_metrics_texts"]


def merge_metrics_texts(texts: list[str]) -> str:
    """Merge Prometheus text expositions into one (one HELP/TYPE per family).

    Each text is expected to carry its own distinguishing label (``worker``);
    samples are grouped under their family in first-seen order.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    order: list[str] = []
    for text in texts:
        current: str | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                head = families[name][0]
                if not any(h.startswith(line[:7]) for h in head):
                    head.append(line)
                current = name
            elif line.startswith("#"):
                continue
            else:
                name = current if current is not None else line.split("{", 1)[0].split(" ", 1)[0]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                families[name][1].append(line)
    out: list[str] = []
    for name in order:
        head, samples = families[name]
        out.extend(head)
        out.extend(samples)
    return "\n".join(out) + "\n"


def cluster_metrics_text(status: dict[str, Any]) -> str:
    """Prometheus text of a collection (every worker, labelled, plus the supervisor)."""
    texts = [w["metrics"] for _, w in sorted(status["workers"].items(),
                                             key=lambda kv: int(kv[0]))]
    if status["supervisor_metrics"]:
        texts.append(status["supervisor_metrics"])
    missing = status["missing"]
    texts.append(
        "# HELP rtserver_cluster_workers_missing Workers that did not answer the collection\n"
        "# TYPE rtserver_cluster_workers_missing gauge\n"
        f"rtserver_cluster_workers_missing {len(missing)}\n")
    return merge_metrics_texts(texts)


def cluster_health_doc(status: dict[str, Any]) -> dict[str, Any]:
    """Health of a collection: ``status`` ok/degraded, per-worker health, reasons."""
    reasons: list[str] = []
    workers: dict[str, Any] = {}
    for wid, info in status["workers"].items():
        health = info["health"]
        workers[wid] = health
        # Either {"ok": bool, "reason": ...} or the node's {"status": ..., "reasons": ...}.
        ok = health["ok"] if "ok" in health else health.get("status") == "ok"
        if not ok:
            why = health.get("reason") or health.get("reasons") or "not ok"
            reasons.append(f"worker {wid}: {why}")
    for wid in status["missing"]:
        reasons.append(f"worker {wid}: not connected to the hub or did not answer")
    return {
        "status": "ok" if not reasons else "degraded",
        "reasons": reasons,
        "workers": workers,
        "expected_workers": status["expected_workers"],
    }
