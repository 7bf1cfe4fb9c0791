"""Gap filling after a bus reconnect, shared by the embedded and Redis clients.

After a reconnect the bus re-declares the handler's interest, then asks the
seq authority what every room published after the position the node last
delivered (:attr:`~rtserver.bus.base.InterestSnapshot.positions`). Live
publications of those rooms that arrive meanwhile are buffered here; when the
recoveries arrive, :meth:`GapFiller.finish` hands the handler, per room and in
seq order: a gap notice when the hole cannot be filled, the recovered
publications, then the buffered live ones not already delivered. A room's
newer live publication therefore never reaches the handler before its missed
ones, and none twice.
"""

from __future__ import annotations

from collections.abc import Callable

from rtserver.bus.base import HANDLER_ERRORS, BusHandler, Recovery, StreamPosition
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["GapFiller"]

_log = get_logger("rtserver.bus.recovery")

_M_GAPS = REGISTRY.counter(
    "rtserver_bus_stream_gaps_total",
    "Rooms whose missed publications could not be recovered after a reconnect",
    ("bus", "reason"))
_M_RECOVERED = REGISTRY.counter(
    "rtserver_bus_recovered_publications_total",
    "Missed publications delivered from the history after a reconnect", ("bus",))


class GapFiller:
    """Buffers live publications of rooms under recovery and applies the recoveries."""

    __slots__ = ("bus", "rooms")

    def __init__(self, bus: str) -> None:
        """``bus`` labels logs and metrics."""
        self.bus = bus
        #: room -> live publications ``(epoch, seq, body)`` held back until its recovery.
        #: Empty when no recovery is in progress (the hot-path check).
        self.rooms: dict[str, list[tuple[str, int, bytes]]] = {}

    def begin(self, rooms: list[str]) -> None:
        """Hold back live publications of ``rooms`` from now on."""
        self.rooms = {room: [] for room in rooms}

    def abort(self) -> None:
        """The connection was lost before the recoveries came: drop what was held back
        (the node's positions did not move, so the next reconnect asks again)."""
        self.rooms = {}

    def finish(self, handler: BusHandler | None, since: list[tuple[str, StreamPosition]],
               recoveries: list[Recovery]) -> None:
        """Deliver per room: gap notice (if any), recovered, then held-back publications."""
        held_back, self.rooms = self.rooms, {}
        if handler is None:
            return
        gaps = 0
        recovered = 0
        for (room, pos), rec in zip(since, recoveries, strict=True):
            current = rec.position
            last = current.seq
            if rec.reason is not None:
                gaps += 1
                _M_GAPS.inc(self.bus, rec.reason)
                if rec.reason == "history_trimmed":
                    first = rec.publications[0][0] if rec.publications else current.seq + 1
                    gap = (pos.seq + 1, first - 1)
                elif rec.reason == "invalid_position":
                    gap = (current.seq + 1, pos.seq)
                else:
                    gap = (1, current.seq)
                _log.warning("bus_stream_gap", bus=self.bus, room=room, reason=rec.reason,
                             since_epoch=pos.epoch, since_seq=pos.seq, epoch=current.epoch,
                             from_seq=gap[0], to_seq=gap[1],
                             note="the node is told (on_stream_gap); its clients must resync")
                self._call(handler.on_stream_gap, room, current.epoch, gap[0], gap[1],
                           rec.reason)
            for seq, body in rec.publications:
                self._call(handler.on_publication, room, current.epoch, seq, body)
            recovered += len(rec.publications)
            for epoch, seq, body in held_back.pop(room, ()):
                if epoch == current.epoch and seq <= last:
                    continue  # already in the recovery
                self._call(handler.on_publication, room, epoch, seq, body)
        for room, items in held_back.items():
            # Held back but not asked for (cannot happen: begin() names the asked rooms).
            for epoch, seq, body in items:
                self._call(handler.on_publication, room, epoch, seq, body)
        if recovered:
            _M_RECOVERED.inc(self.bus, amount=recovered)
        _log.info("bus_streams_recovered", bus=self.bus, rooms=len(since),
                  publications=recovered, gaps=gaps)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the others
            HANDLER_ERRORS.inc(self.bus)
            _log.error("bus_handler_failed", bus=self.bus, callback=getattr(fn, "__name__", "?"),
                       args=repr(args[:3]), error=repr(exc))
