"""Summaries, checks, the stdout table, the JSON report and the PNG plots."""

from __future__ import annotations

import os
import platform
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CLOCK_NOTE",
    "Check",
    "Thresholds",
    "evaluate_checks",
    "format_table",
    "machine_info",
    "percentiles",
    "plot",
    "ratio_table",
    "summarize",
    "write_report",
]

CLOCK_NOTE = (
    "latency = kernel receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME converted to "
    "CLOCK_MONOTONIC with an offset measured in each generator) - publisher's CLOCK_MONOTONIC "
    "send time carried in the message data"
)

PCTS = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def percentiles(values: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles and max of already sorted ns values, in ms."""
    n = len(values)
    out: dict[str, float] = {}
    if n == 0:
        return out
    for name, p in PCTS:
        idx = min(n - 1, max(0, int(-(-p * n // 100)) - 1))
        out[name] = values[idx] / 1e6
    out["max"] = values[-1] / 1e6
    return out


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly summary of one target's raw run result (drops the sample arrays)."""
    s = {k: v for k, v in res.items() if k not in ("latencies_ns", "fanout")}
    lat: array[int] | None = res.get("latencies_ns")
    sorted_lat = sorted(lat) if lat is not None else []
    s["latency_ms"] = percentiles(sorted_lat)
    s["latency_samples"] = len(sorted_lat)
    fo: dict[int, list[int]] = res.get("fanout") or {}
    comp = sorted(v[1] - v[0] for v in fo.values())
    s["fanout_completion_ms"] = percentiles(comp)
    s["fanout_publishes"] = len(comp)
    pub_err = sum((res.get("publish_errors") or {}).values())
    s["integrity_failures"] = (
        res.get("lost", 0)
        + res.get("duplicates", 0)
        + res.get("out_of_order", 0)
        + res.get("lost_connections", 0)
        + pub_err
    )
    return s


def plot_series(res: dict[str, Any]) -> dict[str, Any]:
    """Downsampled series for the plots (latency CDF and fan-out completion over time)."""
    lat: array[int] | None = res.get("latencies_ns")
    vals = sorted(lat) if lat is not None else []
    n = len(vals)
    step = max(1, n // 2000)
    cdf_x = [vals[i] / 1e6 for i in range(0, n, step)]
    cdf_y = [(i + 1) / n for i in range(0, n, step)]
    if n and cdf_x[-1] != vals[-1] / 1e6:
        cdf_x.append(vals[-1] / 1e6)
        cdf_y.append(1.0)
    fo: dict[int, list[int]] = res.get("fanout") or {}
    pts = sorted((v[0], v[1] - v[0]) for v in fo.values())
    t0 = pts[0][0] if pts else 0
    step = max(1, len(pts) // 4000)
    fo_x = [(t - t0) / 1e9 for t, _ in pts[::step]]
    fo_y = [c / 1e6 for _, c in pts[::step]]
    return {"cdf_x": cdf_x, "cdf_y": cdf_y, "fo_x": fo_x, "fo_y": fo_y}


@dataclass
class Thresholds:
    """``--check`` targets; None disables an optional check."""

    connected_frac: float = 1.0
    p99_ms: float = 50.0
    fanout_p99_ms: float | None = None
    connect_s: float | None = None
    rss_per_conn_kb: float | None = None
    min_deliveries_per_s: float | None = None


@dataclass
class Check:
    """One verdict line."""

    target: str
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"target": self.target, "check": self.name, "ok": self.ok, "detail": self.detail}


def _over(value: float, limit: float, unit: str) -> str:
    diff = value - limit
    pct = 100.0 * diff / limit if limit else float("inf")
    return f"{value:.3f} {unit} vs limit {limit:g} {unit}: over by {diff:.3f} {unit} ({pct:+.0f}%)"


def evaluate_checks(s: dict[str, Any], th: Thresholds, enabled: bool) -> list[Check]:
    """Integrity checks always; threshold checks when ``enabled`` (``--check``)."""
    t = s["target"]
    out: list[Check] = []
    for key in ("lost", "duplicates", "out_of_order", "lost_connections"):
        v = s.get(key, 0)
        out.append(Check(t, key, v == 0, f"{v} (must be 0)"))
    failed = s.get("connect_failed", 0)
    reasons = s.get("connect_errors") or {}
    out.append(Check(t, "connect_failed", failed == 0,
                     f"{failed} of {s.get('connections', 0)} (must be 0)"
                     + (f": {reasons}" if reasons else "")))
    pe = s.get("publish_errors") or {}
    out.append(Check(t, "publish_errors", not pe, f"{pe or 0} (must be none)"))
    if "acks_complete" in s:
        sent, acked = s.get("published", 0), s.get("acked", 0)
        out.append(Check(t, "acks", bool(s["acks_complete"]) and acked == sent,
                         f"{acked} of {sent} publishes acknowledged within --ack-timeout "
                         "(must be all)"))
    se = s.get("server_error_frames") or {}
    if se:
        out.append(Check(t, "server_error_frames", False, f"{se} on subscribed connections"))
    if "drain_complete" in s and not s["drain_complete"]:
        out.append(
            Check(t, "drain", False, "not every expected delivery arrived before --drain-timeout")
        )
    if not enabled:
        return out
    n, ok = s.get("connections", 0), s.get("connected", 0)
    need = th.connected_frac * n
    out.append(
        Check(
            t,
            "connected",
            ok >= need,
            f"{ok}/{n} connected"
            + ("" if ok >= need else f", {need - ok:.0f} short of {need:.0f}"),
        )
    )
    p99 = s["latency_ms"].get("p99")
    if p99 is None:
        out.append(Check(t, "latency_p99", True, "not applicable: no deliveries in this scenario"))
    else:
        out.append(
            Check(
                t,
                "latency_p99",
                p99 < th.p99_ms,
                f"{p99:.3f} ms < {th.p99_ms:g} ms"
                if p99 < th.p99_ms
                else _over(p99, th.p99_ms, "ms"),
            )
        )
    if th.fanout_p99_ms is not None:
        fp = s["fanout_completion_ms"].get("p99")
        if fp is None:
            out.append(Check(t, "fanout_p99", False, "no fan-out measured"))
        else:
            good = fp < th.fanout_p99_ms
            out.append(
                Check(
                    t,
                    "fanout_p99",
                    good,
                    f"{fp:.3f} ms" if good else _over(fp, th.fanout_p99_ms, "ms"),
                )
            )
    if th.connect_s is not None:
        cs = s.get("time_to_all_subscribed_s")
        good = cs is not None and cs <= th.connect_s and ok == n
        out.append(
            Check(
                t,
                "connect_time",
                good,
                "nothing connected"
                if cs is None
                else (f"{cs:.3f} s" if good else _over(cs, th.connect_s, "s")),
            )
        )
    if th.rss_per_conn_kb is not None:
        r = s.get("server_rss_per_connection_bytes")
        if r is None:
            out.append(Check(t, "rss_per_connection", False,
                             s.get("server_rss_note") or "not measured (no server pid)"))
        else:
            kb = r / 1024
            good = kb <= th.rss_per_conn_kb
            out.append(
                Check(
                    t,
                    "rss_per_connection",
                    good,
                    f"{kb:.2f} KiB" if good else _over(kb, th.rss_per_conn_kb, "KiB"),
                )
            )
    if th.min_deliveries_per_s is not None:
        d = s.get("deliveries_per_s") or 0.0
        good = d >= th.min_deliveries_per_s
        out.append(
            Check(
                t,
                "deliveries_per_s",
                good,
                f"{d:.0f}/s"
                if good
                else f"{d:.0f}/s below {th.min_deliveries_per_s:g}/s by "
                f"{th.min_deliveries_per_s - d:.0f}/s",
            )
        )
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS: list[tuple[str, Any]] = [
    ("connections ok / asked", lambda s: f"{s.get('connected', 0):,}/{s.get('connections', 0):,}"),
    ("connect failed", lambda s: s.get("connect_failed")),
    ("time to all subscribed s", lambda s: s.get("time_to_all_subscribed_s")),
    ("server CPU s (connect)", lambda s: s.get("server_connect_cpu_s")),
    (
        "published / acked",
        lambda s: f"{s.get('published', '-')}/{s.get('acked', '-')}" if "published" in s else "-",
    ),
    ("deliveries", lambda s: s.get("deliveries")),
    ("deliveries/s", lambda s: s.get("deliveries_per_s")),
    ("latency p50 ms", lambda s: s["latency_ms"].get("p50")),
    ("latency p90 ms", lambda s: s["latency_ms"].get("p90")),
    ("latency p99 ms", lambda s: s["latency_ms"].get("p99")),
    ("latency p99.9 ms", lambda s: s["latency_ms"].get("p99.9")),
    ("latency max ms", lambda s: s["latency_ms"].get("max")),
    ("fan-out completion p50 ms", lambda s: s["fanout_completion_ms"].get("p50")),
    ("fan-out completion p99 ms", lambda s: s["fanout_completion_ms"].get("p99")),
    ("fan-out completion max ms", lambda s: s["fanout_completion_ms"].get("max")),
    (
        "lost / dup / out-of-order",
        lambda s: f"{s.get('lost', 0)}/{s.get('duplicates', 0)}/{s.get('out_of_order', 0)}",
    ),
    ("server CPU %", lambda s: s.get("server_cpu_pct")),
    ("server CPU us/delivery", lambda s: s.get("server_cpu_us_per_delivery")),
    ("server processes", lambda s: len(s.get("server_pids") or []) or None),
    (
        "server RSS/conn KiB",
        lambda s: (
            None
            if s.get("server_rss_per_connection_bytes") is None
            else s["server_rss_per_connection_bytes"] / 1024
        ),
    ),
    ("generator CPU max %", lambda s: s.get("generator_cpu_max_pct")),
    ("generator CPU us/delivery", lambda s: s.get("generator_cpu_us_per_delivery")),
]


def format_table(summaries: list[dict[str, Any]]) -> str:
    """Metrics as rows, targets as columns."""
    header = ["metric"] + [s["target"] for s in summaries]
    rows = [header]
    for label, fn in ROWS:
        rows.append([label] + [_fmt(fn(s)) for s in summaries])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


RATIO_ROWS: list[tuple[str, Any, str]] = [
    ("latency p99", lambda s: s["latency_ms"].get("p99"), "lower"),
    ("fan-out completion p99", lambda s: s["fanout_completion_ms"].get("p99"), "lower"),
    ("deliveries/s", lambda s: s.get("deliveries_per_s"), "higher"),
    ("server CPU us/delivery", lambda s: s.get("server_cpu_us_per_delivery"), "lower"),
    ("server RSS/conn B", lambda s: s.get("server_rss_per_connection_bytes"), "lower"),
    ("time to all subscribed", lambda s: s.get("time_to_all_subscribed_s"), "lower"),
    ("server CPU s (connect)", lambda s: s.get("server_connect_cpu_s"), "lower"),
]


def ratio_table(main: dict[str, Any], peers: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """rtserver value / peer value for each metric (with which direction is better)."""
    out: dict[str, Any] = {}
    header = ["metric (better)", main["target"]] + [
        f"{main['target']}/{p['target']}" for p in peers
    ]
    rows = [header]
    for label, fn, better in RATIO_ROWS:
        mv = fn(main)
        row = [f"{label} ({better})", _fmt(mv)]
        for p in peers:
            pv = fn(p)
            r = (mv / pv) if (mv is not None and pv) else None
            out.setdefault(p["target"], {})[label] = r
            row.append("-" if r is None else f"{r:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines), out


def machine_info() -> dict[str, Any]:
    """CPU count, kernel, Python, load average at report time."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "shared_machine_note": (
            "other processes may share this machine; compare ratios within one run"
        ),
    }


def write_report(report_dir: Path, scenario: str, doc: dict[str, Any]) -> Path:
    """Write the JSON report file; returns its path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = report_dir / f"bench-{scenario}-{stamp}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def plot(
    report_dir: Path, scenario: str, series: dict[str, dict[str, Any]]
) -> tuple[list[Path], str | None]:
    """Latency CDF and fan-out completion PNGs; returns (paths, reason plots were skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"matplotlib is not installed ({exc}); install the [bench] extra to get plots"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for name, sr in series.items():
        if sr["cdf_x"]:
            ax.plot(sr["cdf_x"], sr["cdf_y"], label=name)
            drawn += 1
    ax.set_xscale("log")
    ax.set_xlabel("per-delivery latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(f"{scenario}: latency CDF (kernel receive timestamp - send time)")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no deliveries in this scenario", transform=ax.transAxes, ha="center")
    p = report_dir / f"bench-{scenario}-{stamp}-latency-cdf.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for name, sr in series.items():
        if sr["fo_x"]:
            ax.plot(sr["fo_x"], sr["fo_y"], ".", markersize=3, label=name)
            drawn += 1
    ax.set_xlabel("publish time since first publish (s)")
    ax.set_ylabel("fan-out completion, last subscriber (ms)")
    ax.set_title(f"{scenario}: fan-out completion per publish")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no publishes in this scenario", transform=ax.transAxes, ha="center")
    p = report_dir / f"bench-{scenario}-{stamp}-fanout.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths, None
