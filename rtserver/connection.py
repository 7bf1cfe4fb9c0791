"""One client connection and its explicit lifecycle states.

A :class:`Connection` is created by the node and registered in the worker's
:class:`~rtserver.hub.Hub`, the one owner of the tables it appears in: its
``rooms`` set is mutated only by :meth:`Hub.join` / :meth:`Hub.leave`; the
session reads the same set (as a read-only view) to check limits.

Its state history (``transitions``) is one flat tuple, four items per
transition: state, wall-clock time, reason, close code (the states, reasons and
codes are shared objects; bounded by ``admin.connection_state_history``, see
:meth:`Connection.record_state`).
"""

from __future__ import annotations

import enum
from typing import Any

from rtserver.auth import Principal
from rtserver.protocol.session import Session

__all__ = ["ConnState", "Connection"]


class ConnState(enum.Enum):
    """Explicit lifecycle of a connection."""

    CONNECTING = "connecting"
    AUTHENTICATED = "authenticated"
    ANONYMOUS = "anonymous"
    CLOSING = "closing"
    CLOSED = "closed"

    # Members are singletons, equal only to themselves: hashed by identity in C
    # (Enum.__hash__ is Python code, run at every update of the per-state counts).
    __hash__ = object.__hash__


class Connection:
    """One client connection: identity, state, rooms (via its session), write side."""

    __slots__ = ("connected_at", "id", "ping_sent_at", "remote", "rooms", "session", "sink",
                 "slot", "state", "transitions", "transitions_dropped", "user_agent", "ws")

    def __init__(self, connection_id: str, ws: Any, sink: Any, session: Session,
                 remote: str, user_agent: str | None, connected_at: float,
                 rooms: set[str]) -> None:
        self.id = connection_id
        #: Rooms this connection is subscribed to: owned by the Hub (join/leave), read by
        #: the session through the same set.
        self.rooms = rooms
        self.ws = ws
        self.sink = sink
        self.session = session
        self.remote = remote
        self.user_agent = user_agent
        self.connected_at = connected_at
        self.state = ConnState.CONNECTING
        #: Monotonic time of the last WebSocket ping the heartbeat sweep sent (0: none).
        self.ping_sent_at = 0.0
        #: Index of the heartbeat sweep slot holding this connection.
        self.slot = 0
        #: State history, flat: state, time.time(), reason, close code, state, ... (a tuple:
        #: smaller than a list, replaced at each of the few transitions).
        self.transitions: tuple[Any, ...] = ()
        #: Transitions dropped from the middle of the history (over its bound).
        self.transitions_dropped = 0

    def record_state(self, state: ConnState, at: float, reason: str, close_code: int | None,
                     bound: int) -> None:
        """Append one transition; over ``bound`` the second-oldest one is dropped (the first
        state and the latest ``bound - 1`` stay) and counted in ``transitions_dropped``."""
        items = (*self.transitions, state._value_, at, reason, close_code)
        if len(items) > 4 * bound:
            items = items[:4] + items[8:]
            self.transitions_dropped += 1
        self.transitions = items

    def state_history(self) -> list[dict[str, Any]]:
        """The recorded transitions, oldest first (admin endpoints, the close record)."""
        t = self.transitions
        return [{"state": t[i], "at": t[i + 1], "reason": t[i + 2], "close_code": t[i + 3]}
                for i in range(0, len(t), 4)]

    @property
    def principal(self) -> Principal | None:
        """The authenticated identity (``None`` while connecting)."""
        return self.session.principal

    @property
    def user(self) -> str | None:
        """The user id, ``None`` for anonymous or not yet authenticated connections."""
        p = self.session.principal
        return p.user if p is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Operator view of the connection (admin endpoints)."""
        p = self.session.principal
        return {
            "connection_id": self.id,
            "state": self.state.value,
            "user": p.user if p else None,
            "permissions": sorted(p.permissions) if p else [],
            "rooms": sorted(self.rooms),
            "remote": self.remote,
            "user_agent": self.user_agent,
            "connected_at": self.connected_at,
            "last_activity": self.session.last_activity,
            "state_history": self.state_history(),
            "state_history_dropped": self.transitions_dropped,
        }
