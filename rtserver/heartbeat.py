"""The heartbeat sweep: heartbeat frames, WebSocket pings, idle and token-expiry closes.

One task per worker, never one per connection. Connections sit in the Hub's
round-robin sweep slots; each step of ``heartbeat.interval / sweep_slices``
seconds handles one slot, so 10,000 connections cost many short steps, never
one long stall of the event loop, and a new connection is in a slot from its
first moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from websockets.protocol import State

from rtserver.config import HeartbeatConfig
from rtserver.connection import Connection, ConnState
from rtserver.protocol.close_codes import CloseCode
from rtserver.protocol.codec import Codec, ErrorCode
from rtserver.protocol.messages import Heartbeat
from rtserver.protocol.session import utc_now

__all__ = ["HeartbeatSweep"]

OPEN = State.OPEN

#: (conn, code, message, action): send an error frame.
ErrorFn = Callable[[Connection, str, str, str], None]
#: (conn, close code, reason): close a connection.
CloseFn = Callable[[Connection, int, str], None]


class HeartbeatSweep:
    """Sends the heartbeat of one worker's connections, slot by slot."""

    def __init__(self, config: HeartbeatConfig, slots: list[set[Connection]], codec: Codec,
                 error: ErrorFn, close: CloseFn, count_sent: Callable[[int], None]) -> None:
        self.config = config
        self.slots = slots
        self.codec = codec
        self._error = error
        self._close = close
        self._count_sent = count_sent
        #: The node's fan-out core (set when the node started).
        self.fanout: Any = None
        #: Called once per step with the monotonic time (the node drops stale exclusions).
        self.on_step: Callable[[float], None] | None = None

    async def run(self) -> None:
        """Step through the slots forever (cancelled at node shutdown)."""
        step = self.config.interval / len(self.slots)
        index = 0
        while True:
            await asyncio.sleep(step)
            conns = self.slots[index]
            if conns:
                self.tick(time.monotonic(), time.time(), list(conns))
            index = (index + 1) % len(self.slots)

    def tick(self, now: float, wall: float, conns: list[Connection]) -> None:
        """Send the heartbeat frame (and a WebSocket ping) to ``conns``; close idle ones,
        expired tokens and connections whose last ping was not answered in time."""
        hb = self.config
        idle = hb.idle_timeout
        ws_ping = hb.ws_ping
        ping_timeout = hb.ws_ping_timeout
        if self.on_step is not None:
            self.on_step(now)
        sinks = []
        # Pinged and sent the heartbeat in one write (uncompressed, authenticated ones).
        pinged = []
        for conn in conns:
            state = conn.state
            if state is ConnState.CLOSING or state is ConnState.CLOSED:
                continue
            if now - conn.session.last_activity > idle:
                self._error(conn, "idle_timeout", f"no message from the client for {idle:g} s",
                            'Required action: send {"type":"ping"} more often than '
                            "heartbeat.idle_timeout")
                self._close(conn, CloseCode.IDLE, "idle timeout")
                continue
            p = conn.session.principal
            if p is not None and p.expires_at is not None and p.expires_at <= wall:
                self._error(conn, ErrorCode.TOKEN_EXPIRED, "the token has expired",
                            "Required action: reconnect with a fresh token")
                self._close(conn, CloseCode.AUTH_FAILED, "token expired")
                continue
            if ws_ping:
                ws = conn.ws
                sent = conn.ping_sent_at
                if sent and getattr(ws, "last_pong", sent) < sent and now - sent > ping_timeout:
                    self._close(conn, CloseCode.INTERNAL, "keepalive ping timeout")
                    continue
                if ws.protocol.state is OPEN:
                    if not sent or getattr(ws, "last_pong", 0.0) >= sent:
                        conn.ping_sent_at = now
                    if state is not ConnState.CONNECTING and not conn.sink.compressed:
                        pinged.append(conn.sink)
                        continue
                    ws.protocol.send_ping(b"")
                    ws.send_data()
            if state is not ConnState.CONNECTING:
                sinks.append(conn.sink)
        if sinks or pinged:
            payload = self.codec.encode(Heartbeat(server_time=utc_now()))
            n = self.fanout.send_many(sinks, payload) if sinks else 0
            if pinged:
                n += self.fanout.ping_and_send_many(pinged, payload)
            self._count_sent(n)
