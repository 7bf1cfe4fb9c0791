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

Cost per publication: one ``perf_counter()``, one list append, one bisect of
16 bounds; per tick: one ``call_soon``.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from rtserver.metrics import REGISTRY, Histogram

__all__ = ["FANOUT_LATENCY", "LATENCY_BUCKETS", "FanoutLatency"]

#: Upper bounds (seconds) of the latency histogram: 10 µs .. 1 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

FANOUT_LATENCY: Histogram = REGISTRY.histogram(
    "rtserver_fanout_latency_seconds",
    "Seconds from a publication's arrival at this worker to its frames written to the "
    "local members' sockets (one observation per publication with local members)",
    LATENCY_BUCKETS)


class FanoutLatency:
    """Measures publications of one worker (one instance per :class:`Rooms`)."""

    def __init__(self, histogram: Histogram = FANOUT_LATENCY) -> None:
        self.histogram = histogram
        self._pending: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def arrived() -> float:
        """The arrival time of a publication (call before its fan-out)."""
        return perf_counter()

    def queued(self, t0: float) -> None:
        """The publication that arrived at ``t0`` was queued for its members."""
        pending = self._pending
        if not pending:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._written)
        pending.append(t0)

    def _written(self) -> None:
        now = perf_counter()
        pending, self._pending = self._pending, []
        observe = self.histogram.observe
        for t0 in pending:
            observe(now - t0)
