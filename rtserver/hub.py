"""This worker's tables: connections by id and by user, room membership, states.

The hub knows nothing about other workers (that is the bus) and does no I/O
except the one structured log line each connection state transition writes.
Room membership is kept as sets of fan-out :class:`Sink` objects so the
fan-out core iterates them directly.
"""

from __future__ import annotations

import time
from typing import Any

from rtserver.config_sections import AdminConfig
from rtserver.connection import Connection, ConnState
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.room_rates import RoomRates

__all__ = ["Hub"]

log = get_logger("rtserver.hub")


_TRANSITIONS_TOTAL = REGISTRY.counter(
    "rtserver_connection_transitions_total", "Connection state transitions", ("state",))


class Hub:
    """Connection and subscription tables owned by one worker."""

    def __init__(self, sweep_slots: int, admin: AdminConfig) -> None:
        """``admin.connection_state_history``: transitions kept per connection;
        ``admin.room_rate_window``: seconds of a room's messages/s."""
        self.state_history = admin.connection_state_history
        #: Publications per room delivered here (rooms with local members only).
        self.rates = RoomRates(admin.room_rate_window)
        self.connections: dict[str, Connection] = {}
        #: Connections spread round-robin over the heartbeat sweep's steps: each
        #: step of the sweep handles one slot, a new connection joins one at once.
        self.sweep_slots: list[set[Connection]] = [set() for _ in range(sweep_slots)]
        self._next_slot = 0
        self.by_user: dict[str, set[Connection]] = {}
        self.rooms: dict[str, set[Any]] = {}
        #: Room -> (epoch, seq) of the last publication delivered here (while it has local
        #: members): duplicates are dropped against it, and a bus fills the gap after it.
        self.positions: dict[str, tuple[str, int]] = {}
        self.all_sinks: set[Any] = set()
        self.state_counts: dict[ConnState, int] = dict.fromkeys(ConnState, 0)

    # ------------------------------------------------------------ connections

    def add(self, conn: Connection) -> None:
        """Register a new connection in state ``connecting``."""
        self.connections[conn.id] = conn
        conn.slot = self._next_slot
        self.sweep_slots[conn.slot].add(conn)
        self._next_slot = (self._next_slot + 1) % len(self.sweep_slots)
        state = conn.state
        self.state_counts[state] += 1
        # ``_value_``: the member's value without the Enum ``value`` property's Python call.
        _TRANSITIONS_TOTAL.inc(state._value_)
        conn.record_state(state, time.time(), "accepted", None, self.state_history)
        log.info("connection_state", connection_id=conn.id, user=None,
                 state=state._value_, reason="accepted", remote=conn.remote,
                 user_agent=conn.user_agent)

    def set_state(self, conn: Connection, state: ConnState, reason: str,
                  close_code: int | None = None) -> None:
        """Move ``conn`` to ``state`` and write its one log line."""
        if conn.state is state:
            return
        self.state_counts[conn.state] -= 1
        self.state_counts[state] += 1
        conn.state = state
        _TRANSITIONS_TOTAL.inc(state._value_)
        conn.record_state(state, time.time(), reason, close_code, self.state_history)
        user = conn.user
        if state is ConnState.AUTHENTICATED or state is ConnState.ANONYMOUS:
            self.all_sinks.add(conn.sink)
            if user is not None:
                self.by_user.setdefault(user, set()).add(conn)
        log.info("connection_state", connection_id=conn.id, user=user,
                 state=state._value_, reason=reason, close_code=close_code)

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
        conn.rooms.add(room)
        members = self.rooms.get(room)
        if members is None:
            self.rooms[room] = {conn.sink}
            return True
        members.add(conn.sink)
        return False

    def leave(self, conn: Connection, room: str) -> bool:
        """Remove ``conn`` from ``room``; True when the room has no local member left."""
        conn.rooms.discard(room)
        members = self.rooms.get(room)
        if members is None:
            return False
        members.discard(conn.sink)
        if not members:
            del self.rooms[room]
            self.positions.pop(room, None)
            self.rates.forget(room)
            return True
        return False

    def subscription_count(self) -> int:
        """Local subscriptions (connection x room)."""
        return sum(len(m) for m in self.rooms.values())
