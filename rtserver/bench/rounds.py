"""Several rounds of one comparison (``rtserver bench SCENARIO --rounds N --vs``).

On a shared machine one run of two targets, one after the other, gives a ratio that
moves with whatever else ran meanwhile, and a peer's own figure can move by itself
between runs (Node ``ws`` under a 10,000-connection storm overflows its single
accept queue in some runs and not in others: docs/bench.md, "Rounds"). With
``--rounds N`` every target runs once per round, in an order that rotates from
round to round (round 1: rtserver first, round 2: the peer first, ...), and each
ratio of :data:`rtserver.bench.report.RATIO_ROWS` is reported per round with its
median, lowest and highest value. The median is the figure to quote; the spread
says how far one run can be from it.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from rtserver.bench.report import RATIO_ROWS, Check
from rtserver.bench.targets import Target

__all__ = ["in_round", "ratio_rounds", "round_order", "round_summary", "rounds_table"]

_BETTER = {label: better for label, _, better in RATIO_ROWS}


def round_order(n_targets: int, round_index: int) -> list[int]:
    """Indexes of the targets in the order round ``round_index`` (0-based) runs them:
    the list rotated by the round's index."""
    if n_targets <= 0:
        return []
    k = round_index % n_targets
    return list(range(k, n_targets)) + list(range(k))


def round_summary(summary: dict[str, Any], target: Target, round_index: int
                  ) -> dict[str, Any]:
    """``summary`` of ``target`` in round ``round_index`` (0-based), with its worker
    count. A ``--url`` server is not restarted between rounds: from round 2 on its RSS
    per connection is that of a server which held connections before (memory it kept
    counts as free), so it is left out (None), the reason in ``server_rss_note``."""
    summary["workers"] = target.workers if target.kind == "spawn" else None
    if (round_index and target.kind == "url"
            and summary.get("server_rss_per_connection_bytes") is not None):
        summary["server_rss_per_connection_bytes"] = None
        summary["server_rss_note"] = (
            f"not comparable in round {round_index + 1}: the --url server was not restarted "
            "after round 1 (compare --url rounds by time and CPU)")
    return summary


def ratio_rounds(
    per_round: list[dict[str, dict[str, dict[str, float | None]]]],
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Fold the ratio dicts of each round (``{main: {peer: {metric: ratio}}}``, as
    :func:`rtserver.bench.report.ratio_table` gives them) into ``{main: {peer:
    {metric: {"rounds": [...], "median", "min", "max", "measured"}}}}``.

    A round without the ratio (a metric the scenario does not measure, or a figure
    missing in that round) is None in ``rounds`` and left out of the statistics;
    ``measured`` counts the rounds that had it, and the statistics are None when
    none had.
    """
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for k, ratios in enumerate(per_round):
        for main, peers in ratios.items():
            for peer, metrics in peers.items():
                for metric, value in metrics.items():
                    entry = out.setdefault(main, {}).setdefault(peer, {}).setdefault(
                        metric, {"rounds": [None] * len(per_round)})
                    entry["rounds"][k] = value
    for folded in out.values():
        for by_metric in folded.values():
            for entry in by_metric.values():
                values = [v for v in entry["rounds"] if v is not None]
                entry["measured"] = len(values)
                entry["median"] = statistics.median(values) if values else None
                entry["min"] = min(values) if values else None
                entry["max"] = max(values) if values else None
    return out


def in_round(checks: list[Check], k: int, n: int) -> list[Check]:
    """``checks`` of round ``k`` (0-based) of ``n``, their target named with the round
    when there is more than one."""
    if n == 1:
        return checks
    return [dataclasses.replace(c, target=f"{c.target} r{k + 1}") for c in checks]


def rounds_table(main: str, peer: str, metrics: dict[str, dict[str, Any]]) -> str:
    """The per-round ratios of ``main``/``peer`` with their median, lowest and highest,
    one row per metric measured in at least one round."""
    rows_in = [(m, e) for m, e in metrics.items() if e["measured"]]
    if not rows_in:
        return f"{main}/{peer}: no ratio measured in any round"
    n = len(rows_in[0][1]["rounds"])
    header = [f"{main}/{peer} (better)"] + [f"r{k + 1}" for k in range(n)] + [
        "median", "min", "max"]
    rows = [header]
    for metric, e in rows_in:
        cells = ["-" if v is None else f"{v:.2f}x" for v in e["rounds"]]
        rows.append([f"{metric} ({_BETTER.get(metric, '?')})", *cells, f"{e['median']:.2f}x",
                     f"{e['min']:.2f}x", f"{e['max']:.2f}x"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
