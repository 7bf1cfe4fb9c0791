"""Buses: how rooms, users and presence span workers (embedded) and machines (Redis)."""

from rtserver.bus.base import (
    Bus,
    BusHandler,
    BusHealth,
    BusUnavailable,
    PresenceMember,
    PresenceSnapshot,
    with_seq,
)

__all__ = [
    "Bus",
    "BusHandler",
    "BusHealth",
    "BusUnavailable",
    "PresenceMember",
    "PresenceSnapshot",
    "with_seq",
]
