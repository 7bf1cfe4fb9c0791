"""Numbers rtserver measures itself, as shown by admin metrics and the performance dashboard.

Everything here reads in-process counters (the node's metrics, the fan-out
core's stats, the domain's latency windows): no I/O.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rtserver.context import NodeStats

from .messages import Latency, PerformanceSnapshot, Rates

if TYPE_CHECKING:
    from .domain import Domain

__all__ = ["PERFORMANCE_METRICS", "RateTracker", "performance_snapshot", "select_metrics"]


def _totals(stats: NodeStats) -> tuple[float, float, float, float, float, float]:
    return (stats.messages_in, stats.messages_out, stats.publications, stats.deliveries,
            stats.errors, float(stats.fanout.get("bytes_written", 0)))


class RateTracker:
    """Per-second rates of the node's counters between two calls of :meth:`sample`."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self._last = _totals(domain.ctx.stats())
        self._at = time.monotonic()

    def sample(self, stats: NodeStats | None = None) -> Rates:
        """Rates since the previous sample (or since this tracker was made)."""
        now = time.monotonic()
        totals = _totals(stats if stats is not None else self.domain.ctx.stats())
        elapsed = max(now - self._at, 1e-6)
        d = [round((b - a) / elapsed, 3) for a, b in zip(self._last, totals, strict=True)]
        self._last, self._at = totals, now
        return Rates(messages_in=d[0], messages_out=d[1], publications=d[2], deliveries=d[3],
                     errors=d[4], bytes_written=d[5])


def performance_snapshot(domain: Domain, rates: RateTracker) -> PerformanceSnapshot:
    """The performance dashboard's numbers for this worker."""
    stats = domain.ctx.stats()
    return PerformanceSnapshot(
        worker=stats.worker,
        rates=rates.sample(stats),
        handler_latency_ms=domain.handler_latency.summary(),
        publish_latency_ms=domain.publish_latency.summary(),
        query_latency_ms=domain.query_latency.summary(),
        event_loop_lag_ms=domain.loop_lag.summary(),
        fanout=stats.fanout,
        slow_consumers_total=int(stats.slow_consumers),
    )


PERFORMANCE_METRICS: tuple[str, ...] = (
    "messages_in_per_second",
    "messages_out_per_second",
    "publications_per_second",
    "deliveries_per_second",
    "errors_per_second",
    "bytes_written_per_second",
    "connections",
    "rooms",
    "subscriptions",
    "slow_consumers_total",
    "handler_latency_ms",
    "publish_latency_ms",
    "query_latency_ms",
    "event_loop_lag_ms",
)
"""Names ``start_performance`` accepts (docs/domain.md describes each)."""


def select_metrics(domain: Domain, rates: RateTracker,
                   names: list[str]) -> dict[str, float | Latency]:
    """The values of ``names`` (all in :data:`PERFORMANCE_METRICS`)."""
    stats = domain.ctx.stats()
    r = rates.sample(stats)
    values: dict[str, float | Latency] = {
        "messages_in_per_second": r.messages_in,
        "messages_out_per_second": r.messages_out,
        "publications_per_second": r.publications,
        "deliveries_per_second": r.deliveries,
        "errors_per_second": r.errors,
        "bytes_written_per_second": r.bytes_written,
        "connections": float(stats.connections),
        "rooms": float(stats.rooms),
        "subscriptions": float(stats.subscriptions),
        "slow_consumers_total": stats.slow_consumers,
        "handler_latency_ms": domain.handler_latency.summary(),
        "publish_latency_ms": domain.publish_latency.summary(),
        "query_latency_ms": domain.query_latency.summary(),
        "event_loop_lag_ms": domain.loop_lag.summary(),
    }
    return {name: values[name] for name in names}
