"""Every WebSocket close code rtserver sends, in one place.

The table in docs/protocol.md documents each code: what it means and whether
and how a client reconnects. ``RECONNECT`` is that column as data, so the
server, the docs test and the JavaScript SDK agree.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["RECONNECT", "CloseCode", "close_label"]


class CloseCode(IntEnum):
    """Close codes sent by the server."""

    #: Normal closure (the client asked, or an operator action with no fault).
    NORMAL = 1000
    #: Policy violation: error budget spent, forbidden behaviour.
    POLICY = 1008
    #: A frame over ``limits.max_message_size``.
    TOO_BIG = 1009
    #: A server bug below the read loop, or a ping left unanswered.
    INTERNAL = 1011
    #: The server is restarting (graceful drain).
    RESTART = 1012
    #: Slow consumer: the outbound buffer limit was exceeded.
    TRY_AGAIN_LATER = 1013
    #: Authentication failed or the token expired.
    AUTH_FAILED = 4001
    #: Idle: no client frame within ``heartbeat.idle_timeout``.
    IDLE = 4008
    #: The user already holds ``limits.max_connections_per_user`` connections on this worker.
    USER_LIMIT = 4029


#: How a client reacts to each code: "backoff" (reconnect with full jitter),
#: "token" (fetch a fresh token once, then reconnect), "never" (a change is
#: needed first).
RECONNECT: dict[int, str] = {
    CloseCode.NORMAL: "never",
    CloseCode.POLICY: "never",
    CloseCode.TOO_BIG: "never",
    CloseCode.INTERNAL: "backoff",
    CloseCode.RESTART: "backoff",
    CloseCode.TRY_AGAIN_LATER: "backoff",
    CloseCode.AUTH_FAILED: "token",
    CloseCode.IDLE: "backoff",
    CloseCode.USER_LIMIT: "never",
}

_KNOWN_LABELS = {int(c): str(int(c)) for c in CloseCode} | {
    1001: "1001", 1002: "1002", 1003: "1003", 1005: "1005", 1006: "1006", 1007: "1007",
    1010: "1010", 1014: "1014", 1015: "1015"}


def close_label(code: int | None) -> str:
    """A bounded metric label for a close code: client-chosen codes fold into ``other``."""
    if code is None:
        return "none"
    return _KNOWN_LABELS.get(code, "other")
