"""The core's counters, shared by the node, the room table and the heartbeat.

Every series label is server-controlled (message types of the codec's union,
error codes, close codes folded by :func:`rtserver.protocol.close_codes.close_label`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rtserver.metrics import REGISTRY, Counter

if TYPE_CHECKING:
    from rtserver.bus.base import BusHealth
    from rtserver.hub import Hub

__all__ = [
    "ALERTS",
    "CLOSES",
    "DELIVERIES",
    "ERRORS",
    "HANDLER_FAILURES",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "PUBLICATIONS",
    "RECOVERIES",
    "SLOW_CONSUMERS",
    "STREAM_GAPS",
    "register_node_gauges",
    "total",
]

MESSAGES_IN = REGISTRY.counter("rtserver_messages_in_total", "Client messages by type", ("type",))
MESSAGES_OUT = REGISTRY.counter(
    "rtserver_messages_out_total", "Server messages queued by type", ("type",))
ERRORS = REGISTRY.counter("rtserver_errors_total", "Error replies and closes by code", ("code",))
DELIVERIES = REGISTRY.counter(
    "rtserver_fanout_deliveries_total", "Room publications queued to local connections")
PUBLICATIONS = REGISTRY.counter(
    "rtserver_publications_total", "Room publications received from the bus")
SLOW_CONSUMERS = REGISTRY.counter(
    "rtserver_slow_consumers_total", "Connections closed with 1013 for exceeding the buffer limit")
CLOSES = REGISTRY.counter("rtserver_closes_total", "Connections closed by code", ("code",))
HANDLER_FAILURES = REGISTRY.counter(
    "rtserver_handler_failures_total",
    "Handlers and hooks that failed, by message type and cause (store, bus, bug)",
    ("type", "cause"))
ALERTS = REGISTRY.counter(
    "rtserver_system_alerts_total", "System alerts raised by the core", ("type",))
RECOVERIES = REGISTRY.counter(
    "rtserver_recoveries_total", "Subscribes with since, by outcome (recovered or the reason)",
    ("outcome",))
STREAM_GAPS = REGISTRY.counter(
    "rtserver_stream_gaps_total", "Room publications that arrived out of seq order", ("reason",))


def total(counter: Counter) -> float:
    """Sum of every series of ``counter``."""
    return sum(counter.values.values())


def register_node_gauges(hub: Hub, fanout: Callable[[], Any], bus_health: Callable[[], BusHealth],
                         started_at: float) -> None:
    """The gauges of one worker's node, read at scrape time: connections by state, rooms,
    subscriptions, the fan-out core's counters (``fanout()``: None before it started),
    the bus's health and the uptime."""
    REGISTRY.gauge("rtserver_connections", "Connections by state", ("state",),
                   collect=lambda: {(s.value,): float(n) for s, n in hub.state_counts.items()})
    REGISTRY.gauge("rtserver_rooms", "Rooms with local members",
                   collect=lambda: {(): float(len(hub.rooms))})
    REGISTRY.gauge("rtserver_subscriptions", "Local subscriptions (connection x room)",
                   collect=lambda: {(): float(hub.subscription_count())})

    def fanout_counters() -> dict[tuple[str, ...], float]:
        core = fanout()
        return {(k,): float(v) for k, v in (core.stats().items() if core is not None else ())}

    REGISTRY.gauge("rtserver_fanout", "Fan-out core counters", ("counter",),
                   collect=fanout_counters)
    REGISTRY.gauge("rtserver_bus_up", "1 when the bus is healthy",
                   collect=lambda: {(): 1.0 if bus_health().ok else 0.0})
    REGISTRY.gauge("rtserver_uptime_seconds", "Seconds since this worker started",
                   collect=lambda: {(): time.time() - started_at})
