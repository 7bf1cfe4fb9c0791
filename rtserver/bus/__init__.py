"""Buses: how rooms, users and presence span workers (embedded) and machines (Redis)."""

from rtserver.bus.base import (
    RECOVERY_REASONS,
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    HistoryInfo,
    HistoryReport,
    InterestSnapshot,
    PresenceMember,
    PresenceSnapshot,
    Recovery,
    StreamPosition,
    with_seq,
)

__all__ = [
    "RECOVERY_REASONS",
    "Bus",
    "BusHandler",
    "BusHealth",
    "BusUnavailable",
    "HistoryInfo",
    "HistoryReport",
    "InterestSnapshot",
    "PresenceMember",
    "PresenceSnapshot",
    "Recovery",
    "StreamPosition",
    "with_seq",
]
