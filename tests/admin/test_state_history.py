"""The bound of a connection's state history (``admin.connection_state_history``): the first
transition and the latest ones stay, the dropped ones are counted."""

from __future__ import annotations

from typing import Any

from rtserver.connection import Connection, ConnState


def test_first_and_latest_transitions_stay() -> None:
    session: Any = None
    conn = Connection("c1", None, None, session, "127.0.0.1:1", None, 0.0, set())
    states = [ConnState.CONNECTING, ConnState.ANONYMOUS, ConnState.CONNECTING,
              ConnState.AUTHENTICATED, ConnState.CLOSING, ConnState.CLOSED]
    for i, state in enumerate(states):
        conn.record_state(state, float(i), f"r{i}", 4000 if i >= 4 else None, bound=3)
    history = conn.state_history()
    assert [(h["state"], h["at"], h["reason"]) for h in history] == [
        ("connecting", 0.0, "r0"), ("closing", 4.0, "r4"), ("closed", 5.0, "r5")]
    assert history[-1]["close_code"] == 4000 and conn.transitions_dropped == 3
