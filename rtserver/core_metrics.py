"""The core's counters, shared by the node, the room table and the heartbeat.

Every series label is server-controlled (message types of the codec's union,
error codes, close codes folded by :func:`rtserver.protocol.close_codes.close_label`).
"""

from __future__ import annotations

from rtserver.metrics import REGISTRY, Counter

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
