"""Streaming analytics dashboards (rooms ``analytics:{dashboard}[:{filters-hash}]``).

One stream per (dashboard, filters) on a worker, alive only while one of
its connections watches it: a task that ticks at wall-clock multiples of
``domain.analytics_interval``. Each tick of a database dashboard first claims
the interval (``IntervalClaims``: a PostgreSQL advisory lock keyed by the
stream and the interval number, held by the first worker that asks): the
claimant runs the one query and publishes ``analytics_update`` to the
stream's room, which reaches every viewer on every worker; the other workers
skip the interval. So the query runs once per interval whatever the number of
viewers and workers, and not at all when nobody watches.

The performance dashboard runs no query: each worker with viewers publishes
its own measured numbers (labelled ``worker``).

Backend events (ingress ``analytics_event``) go to ``analytics:{dashboard}``,
which every viewer of the dashboard joins.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from typing import Any

import msgspec

from rtserver.backoff import BackoffPolicy
from rtserver.context import BusUnavailable, Connection
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.codec import ErrorCode
from rtserver.store import StoreUnavailable

from .domain import Domain
from .ingress_kinds import AnalyticsEvent
from .measure import RateTracker, performance_snapshot
from .messages import (
    AnalyticsError,
    AnalyticsEventOut,
    AnalyticsStarted,
    AnalyticsStopped,
    AnalyticsUpdate,
    ConversionFilters,
    PerformanceFilters,
    QuotesFilters,
    StartAnalytics,
    StopAnalytics,
)
from .queries import IntervalClaims, claim_key

__all__ = ["EVENT_DASHBOARDS", "Analytics", "Stream", "filters_field"]

log = get_logger("rtserver.domains.insurance.analytics")

QUERIES = REGISTRY.counter(
    "rtserver_analytics_queries_total", "Analytics dashboard queries run", ("dashboard",))
CLAIMS_LOST = REGISTRY.counter(
    "rtserver_analytics_intervals_skipped_total",
    "Analytics intervals another worker claimed (computed there)", ("dashboard",))
FAILURES = REGISTRY.counter(
    "rtserver_analytics_failures_total", "Analytics intervals that failed", ("dashboard", "cause"))

FILTER_TYPES: dict[str, type[Any]] = {
    "quotes": QuotesFilters,
    "conversion": ConversionFilters,
    "performance": PerformanceFilters,
}

EVENT_DASHBOARDS: dict[str, tuple[str, ...]] = {
    "quote_created": ("quotes", "conversion"),
    "quote_converted": ("quotes", "conversion"),
    "calculation_complete": ("quotes",),
}
"""Which dashboards' event rooms get each ingress analytics event."""

_FIELD_PATTERNS = (re.compile(r"field `([^`]+)`"), re.compile(r"at `\$\.([^`\[]+)"))


def filters_field(error: str) -> str:
    """The filter key a msgspec validation error names (``filters`` when none)."""
    for pattern in _FIELD_PATTERNS:
        m = pattern.search(error)
        if m is not None:
            return f"filters.{m.group(1)}"
    return "filters"


class Stream:
    """One (dashboard, filters) watched on this worker."""

    def __init__(self, dashboard: str, filters: Any, canonical: bytes, room: str) -> None:
        self.dashboard = dashboard
        self.filters = filters
        self.canonical = canonical
        self.room = room
        self.key = claim_key(room)
        self.viewers: set[str] = set()
        self.task: asyncio.Task[Any] | None = None
        self.last: AnalyticsUpdate | None = None
        self.rates: RateTracker | None = None


class Analytics:
    """Analytics streams of one node."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.streams: dict[str, Stream] = {}
        self.watches: dict[str, set[str]] = {}
        self.claims: IntervalClaims | None = None
        #: Intervals this node computed / left to another claimant (tests, health).
        self.computed = 0
        self.skipped = 0
        interval = domain.settings.analytics_interval
        #: A stream whose task failed restarts after one interval (doubling up to 60 s).
        self._restart = BackoffPolicy(initial_delay=interval, max_delay=max(60.0, interval))

    # ------------------------------------------------------------ start / stop

    async def start(self, conn: Connection, msg: StartAnalytics) -> None:
        """``start_analytics``: validate, join the rooms, start or share the stream."""
        d = self.domain
        ctx = d.ctx
        if not d.require_permission(conn, "analytics:read", "start_analytics", msg.id):
            return
        try:
            filters = msgspec.json.decode(msg.filters, type=FILTER_TYPES[msg.dashboard])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field = filters_field(str(exc))
            d.validation_error(conn, field, f"invalid filters for {msg.dashboard}: {exc}",
                               "Required action: send the filters documented for this "
                               "dashboard in docs/domain.md (unknown keys are rejected)", msg.id)
            return
        if msg.dashboard != "performance" and ctx.require_store(
                conn, f"the {msg.dashboard} dashboard", msg.id) is None:
            return
        canonical = msgspec.json.encode(filters)
        digest = hashlib.sha256(msg.dashboard.encode() + b"\0" + canonical).hexdigest()[:16]
        room = f"analytics:{msg.dashboard}:{digest}"
        events_room = f"analytics:{msg.dashboard}"
        watched = self.watches.get(conn.id, set())
        if room in watched:
            d.error(conn, ErrorCode.ALREADY_SUBSCRIBED,
                    f"already watching {msg.dashboard} with these filters ({room})",
                    "Required action: none; updates keep coming", msg.id)
            return
        if room not in self.streams and len(self.streams) >= d.settings.analytics_max_streams:
            d.error(conn, "too_many_streams",
                    f"this worker already computes {len(self.streams)} analytics streams, the "
                    "limit (domain.analytics_max_streams)",
                    "Required action: reuse the filters of an open dashboard, or ask the "
                    "operator to raise domain.analytics_max_streams", msg.id)
            return
        if not await ctx.subscribe(conn, [events_room, room], msg.id):
            return
        self.watches.setdefault(conn.id, set()).add(room)
        stream = self.streams.get(room)
        if stream is None:
            stream = Stream(msg.dashboard, filters, canonical, room)
            if msg.dashboard == "performance":
                stream.rates = RateTracker(d)
            self.streams[room] = stream
            stream.task = d.spawn(lambda: self._run(stream), f"analytics-{room}",
                                  restart=self._restart,
                                  on_failure=lambda exc, n: self._stream_failed(stream, exc, n))
            log.info("analytics_stream_started", room=room, dashboard=msg.dashboard)
        stream.viewers.add(conn.id)
        d.reply(conn, AnalyticsStarted(
            dashboard=msg.dashboard, filters=msgspec.Raw(canonical), room=room,
            events_room=events_room, interval=d.settings.analytics_interval, id=msg.id))
        if stream.last is not None:
            d.reply(conn, stream.last)

    async def stop(self, conn: Connection, msg: StopAnalytics) -> None:
        """``stop_analytics``: leave every stream of ``dashboard`` and its events room."""
        ctx = self.domain.ctx
        rooms = sorted(r for r in self.watches.get(conn.id, ())
                       if self.streams[r].dashboard == msg.dashboard)
        for room in rooms:
            self._remove_viewer(conn.id, room)
            if room in conn.rooms:
                await ctx.unsubscribe(conn, room)
        events_room = f"analytics:{msg.dashboard}"
        if events_room in conn.rooms and rooms:
            await ctx.unsubscribe(conn, events_room)
            rooms.append(events_room)
        self.domain.reply(conn, AnalyticsStopped(dashboard=msg.dashboard, rooms=rooms,
                                                 id=msg.id))

    def left_room(self, conn: Connection, room: str) -> None:
        """A connection left ``room`` (unsubscribe or disconnect): stop watching it."""
        if room in self.watches.get(conn.id, ()):
            self._remove_viewer(conn.id, room)

    def forget(self, conn: Connection) -> None:
        """Drop every watch of a closed connection."""
        for room in list(self.watches.get(conn.id, ())):
            self._remove_viewer(conn.id, room)

    def _remove_viewer(self, conn_id: str, room: str) -> None:
        watched = self.watches.get(conn_id)
        if watched is not None:
            watched.discard(room)
            if not watched:
                del self.watches[conn_id]
        stream = self.streams.get(room)
        if stream is None:
            return
        stream.viewers.discard(conn_id)
        if stream.viewers:
            return
        del self.streams[room]
        if stream.task is not None:
            stream.task.cancel()
        log.info("analytics_stream_stopped", room=room, dashboard=stream.dashboard)
        claims = self.claims
        if claims is not None:
            async def release() -> None:
                await claims.release_key(stream.key)

            self.domain.spawn(release, f"analytics-release-{room}")

    async def close(self) -> None:
        """Stop every stream (server shutdown)."""
        tasks = [s.task for s in self.streams.values() if s.task is not None]
        self.streams.clear()
        self.watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.claims is not None:
            await self.claims.close()

    # ------------------------------------------------------------ computing

    async def _run(self, stream: Stream) -> None:
        interval = self.domain.settings.analytics_interval
        while True:
            now = time.time()
            n = math.floor(now / interval) + 1
            await asyncio.sleep(max(0.0, n * interval - now))
            await self._tick(stream, n)

    def _stream_failed(self, stream: Stream, exc: BaseException, failures: int) -> None:
        FAILURES.inc(stream.dashboard, "bug")
        self._local_error(stream, "stream_failed",
                          f"the analytics stream {stream.room} failed ({exc!r}); restarting "
                          f"(failure {failures})",
                          "Required action: none; updates resume when the stream restarts "
                          "(report the error if it repeats)")

    def _local_error(self, stream: Stream, code: str, message: str, action: str) -> None:
        frame = AnalyticsError(dashboard=stream.dashboard, room=stream.room, code=code,
                               message=message, action=action)
        for conn_id in stream.viewers:
            self.domain.ctx.send_to_connection(conn_id, frame)

    async def _compute(self, stream: Stream) -> Any:
        d = self.domain
        store = d.ctx.store
        assert store is not None
        f = stream.filters
        QUERIES.inc(stream.dashboard)
        self.computed += 1
        if isinstance(f, QuotesFilters):
            return await d.timed_query(store.quotes_dashboard(
                hours=f.hours, state=f.state, top_states=d.settings.analytics_top_states))
        assert isinstance(f, ConversionFilters)
        return await d.timed_query(store.conversion_funnel(hours=f.hours))

    async def _tick(self, stream: Stream, n: int) -> None:
        d = self.domain
        data: Any
        if stream.rates is not None:
            data = performance_snapshot(d, stream.rates)
        else:
            store = d.ctx.store
            assert store is not None  # start() refused database dashboards without one
            if self.claims is None:
                self.claims = IntervalClaims(store)
            try:
                if not await self.claims.try_claim(stream.key, n):
                    self.skipped += 1
                    CLAIMS_LOST.inc(stream.dashboard)
                    return
                data = await self._compute(stream)
            except StoreUnavailable as exc:
                FAILURES.inc(stream.dashboard, "store")
                log.error("analytics_interval_failed", room=stream.room, interval_no=n,
                          error=str(exc))
                self._local_error(stream, "store_unavailable",
                                  f"interval {n} of {stream.room} could not be computed: {exc}",
                                  "Required action: none; the next interval is tried again")
                return
        update = AnalyticsUpdate(dashboard=stream.dashboard, room=stream.room,
                                 filters=msgspec.Raw(stream.canonical), interval_no=n,
                                 worker=d.ctx.worker_id, data=data)
        stream.last = update
        try:
            await d.publish(stream.room, update)
        except BusUnavailable as exc:
            FAILURES.inc(stream.dashboard, "bus")
            log.error("analytics_update_local_only", room=stream.room, interval_no=n,
                      error=str(exc), note="viewers on other workers miss this interval")
            for conn_id in stream.viewers:
                d.ctx.send_to_connection(conn_id, update)

    # ------------------------------------------------------------ ingress

    async def backend_event(self, message: AnalyticsEvent) -> None:
        """Send an ingress analytics event to the affected dashboards' event rooms."""
        for dashboard in EVENT_DASHBOARDS[message.event]:
            await self.domain.publish(f"analytics:{dashboard}", AnalyticsEventOut(
                dashboard=dashboard, event=message.event, quote_id=message.quote_id,
                data=message.data))
