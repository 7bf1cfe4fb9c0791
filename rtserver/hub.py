"""This worker's tables: connections by id and by user, room membership, states.

The hub knows nothing about other workers (that is the bus) and does no I/O
except the one structured log line each connection state transition writes.
Room membership is kept as sets of fan-out :class:`Sink` objects so the
fan-out core iterates them directly.
"""

from __future__ import annotations

import enum
from typing import Any

from rtserver.auth import Principal
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.session import Session

__all__ = ["ConnState", "Connection", "Hub"]

log = get_logger("rtserver.hub")


class ConnState(enum.Enum):
    """Explicit lifecycle of a connection."""

    CONNECTING = "connecting"
    AUTHENTICATED = "authenticated"
    ANONYMOUS = "anonymous"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS_TOTAL = REGISTRY.counter(
    "rtserver_connection_transitions_total", "Connection state transitions", ("state",))


class Connection:
    """One client connection: identity, state, rooms (via its session), write side."""

    __slots__ = ("connected_at", "id", "ping_sent_at", "remote", "session", "sink", "slot",
                 "state", "user_agent", "ws")

    def __init__(self, connection_id: str, ws: Any, sink: Any, session: Session,
                 remote: str, user_agent: str | None, connected_at: float) -> None:
        self.id = connection_id
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

    @property
    def principal(self) -> Principal | None:
        """The authenticated identity (``None`` while connecting)."""
        return self.session.principal

    @property
    def user(self) -> str | None:
        """The user id, ``None`` for anonymous or not yet authenticated connections."""
        p = self.session.principal
        return p.user if p is not None else None

    @property
    def rooms(self) -> set[str]:
        """Rooms this connection is subscribed to."""
        return self.session.rooms

    def snapshot(self) -> dict[str, Any]:
        """Operator view of the connection (admin endpoints)."""
        p = self.session.principal
        return {
            "connection_id": self.id,
            "state": self.state.value,
            "user": p.user if p else None,
            "permissions": sorted(p.permissions) if p else [],
            "rooms": sorted(self.session.rooms),
            "remote": self.remote,
            "user_agent": self.user_agent,
            "connected_at": self.connected_at,
            "last_activity": self.session.last_activity,
        }


class Hub:
    """Connection and subscription tables owned by one worker."""

    def __init__(self, sweep_slots: int) -> None:
        self.connections: dict[str, Connection] = {}
        #: Connections spread round-robin over the heartbeat sweep's steps: each
        #: step of the sweep handles one slot, a new connection joins one at once.
        self.sweep_slots: list[set[Connection]] = [set() for _ in range(sweep_slots)]
        self._next_slot = 0
        self.by_user: dict[str, set[Connection]] = {}
        self.rooms: dict[str, set[Any]] = {}
        self.all_sinks: set[Any] = set()
        self.state_counts: dict[ConnState, int] = dict.fromkeys(ConnState, 0)

    # ------------------------------------------------------------ connections

    def add(self, conn: Connection) -> None:
        """Register a new connection in state ``connecting``."""
        self.connections[conn.id] = conn
        conn.slot = self._next_slot
        self.sweep_slots[conn.slot].add(conn)
        self._next_slot = (self._next_slot + 1) % len(self.sweep_slots)
        self.state_counts[conn.state] += 1
        _TRANSITIONS_TOTAL.inc(conn.state.value)
        log.info("connection_state", connection_id=conn.id, user=None,
                 state=conn.state.value, reason="accepted", remote=conn.remote,
                 user_agent=conn.user_agent)

    def set_state(self, conn: Connection, state: ConnState, reason: str,
                  close_code: int | None = None) -> None:
        """Move ``conn`` to ``state`` and write its one log line."""
        if conn.state is state:
            return
        self.state_counts[conn.state] -= 1
        self.state_counts[state] += 1
        conn.state = state
        _TRANSITIONS_TOTAL.inc(state.value)
        if state in (ConnState.AUTHENTICATED, ConnState.ANONYMOUS):
            self.all_sinks.add(conn.sink)
            user = conn.user
            if user is not None:
                self.by_user.setdefault(user, set()).add(conn)
        log.info("connection_state", connection_id=conn.id, user=conn.user,
                 state=state.value, reason=reason, close_code=close_code)

    def remove(self, conn: Connection) -> tuple[list[str], bool]:
        """Drop ``conn`` from every table.

        Returns the rooms that lost their last local member and whether the
        user lost their last local connection.
        """
        self.connections.pop(conn.id, None)
        self.sweep_slots[conn.slot].discard(conn)
        self.all_sinks.discard(conn.sink)
        emptied = [room for room in list(conn.rooms) if self.leave(conn, room)]
        user_gone = False
        user = conn.user
        if user is not None:
            conns = self.by_user.get(user)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self.by_user[user]
                    user_gone = True
        return emptied, user_gone

    # ------------------------------------------------------------ rooms

    def join(self, conn: Connection, room: str) -> bool:
        """Add ``conn`` to ``room``; True when it is the room's first local member."""
        conn.session.rooms.add(room)
        members = self.rooms.get(room)
        if members is None:
            self.rooms[room] = {conn.sink}
            return True
        members.add(conn.sink)
        return False

    def leave(self, conn: Connection, room: str) -> bool:
        """Remove ``conn`` from ``room``; True when the room has no local member left."""
        conn.session.rooms.discard(room)
        members = self.rooms.get(room)
        if members is None:
            return False
        members.discard(conn.sink)
        if not members:
            del self.rooms[room]
            return True
        return False

    def subscription_count(self) -> int:
        """Local subscriptions (connection x room)."""
        return sum(len(m) for m in self.rooms.values())
