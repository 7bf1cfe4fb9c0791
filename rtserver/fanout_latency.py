"""Fan-out latency of this worker: from a publication's arrival to its bytes written.

:class:`FanoutLatency` is fed by :meth:`rtserver.rooms.Rooms.on_publication`
with two O(1) calls per publication (never per delivery): ``arrived()`` (one
``time.perf_counter()``) before the fan-out and ``queued(t0)`` after
``send_many``. The fan-out core writes its queued frames in one flush per
loop tick, scheduled with ``call_soon`` by the first ``send_many`` of the tick;
the first ``queued`` of a tick schedules one callback of its own after it, so
when that callback runs every frame of those publications has been handed to
the members' sockets (``send()``, or the transport's buffer for what the
kernel did not take at once). It observes, per publication,
``now - arrival`` into :data:`FANOUT_LATENCY` (``/metrics``:
``rtserver_fanout_latency_seconds``, a Prometheus histogram).

The same callback observes *publish accepted → delivered* into
:data:`DELIVERY_LATENCY` (``rtserver_publish_delivery_latency_seconds``):
``queued`` also takes the accepting worker's ``time.monotonic()`` carried
through the bus (:attr:`rtserver.bus.base.Bus.accepted_at`; CLOCK_MONOTONIC is
one clock for every process of a machine, so the difference is meaningful
between workers of one node) and the callback observes ``monotonic() -
accepted``. A publication without one (0.0: a replay, another node's) is not
observed there.

Cost per publication: one ``perf_counter()``, one or two list appends, one or
two bisects of 16 bounds; per tick: one ``call_soon`` (and one ``monotonic()``).
"""

from __future__ import annotations

import asyncio
from time import monotonic, perf_counter

from rtserver.metrics import REGISTRY, Histogram

__all__ = ["DELIVERY_LATENCY", "FANOUT_LATENCY", "LATENCY_BUCKETS", "FanoutLatency"]

#: Upper bounds (seconds) of the latency histogram: 10 µs .. 1 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

FANOUT_LATENCY: Histogram = REGISTRY.histogram(
    "rtserver_fanout_latency_seconds",
    "Seconds from a publication's arrival at this worker to its frames written to the "
    "local members' sockets (one observation per publication with local members)",
    LATENCY_BUCKETS)

DELIVERY_LATENCY: Histogram = REGISTRY.histogram(
    "rtserver_publish_delivery_latency_seconds",
    "Seconds from a publication accepted by a worker of this node (handed to its bus) to "
    "its frames written to this worker's members' sockets; the accepting worker's own "
    "delivery included (one observation per publication with local members)",
    LATENCY_BUCKETS)


class FanoutLatency:
    """Measures publications of one worker (one instance per :class:`Rooms`)."""

    def __init__(self, histogram: Histogram = FANOUT_LATENCY,
                 delivery: Histogram = DELIVERY_LATENCY) -> None:
        self.histogram = histogram
        self.delivery = delivery
        self._pending: list[float] = []
        self._accepted: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def arrived() -> float:
        """The arrival time of a publication (call before its fan-out)."""
        return perf_counter()

    def queued(self, t0: float, accepted: float) -> None:
        """The publication that arrived at ``t0`` was queued for its members; ``accepted``:
        the ``time.monotonic()`` at which a worker of this node accepted it, or 0.0 when
        not known (then only the fan-out latency is observed)."""
        pending = self._pending
        if not pending:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._written)
        pending.append(t0)
        if accepted:
            self._accepted.append(accepted)

    def _written(self) -> None:
        now = perf_counter()
        pending, self._pending = self._pending, []
        observe = self.histogram.observe
        for t0 in pending:
            observe(now - t0)
        if self._accepted:
            accepted, self._accepted = self._accepted, []
            now = monotonic()
            observe = self.delivery.observe
            for t in accepted:
                observe(now - t)
