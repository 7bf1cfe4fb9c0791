"""Formats of the Redis bus's room streams: channel publications, history entries,
recovery replies (the Lua side is :mod:`rtserver.bus.redis_scripts`).

* publication (channel message): ``P<seq>\\n<epoch>\\n<origin>\\n<body>``; origin is
  ``<node id> <clock id> <accepted>``: the publishing worker, its machine's monotonic clock
  (:func:`~rtserver.bus.redis_settings.machine_clock_id`) and its ``time.monotonic()``
  when the publication was handed to the bus
* history entry (``P:hist:<room>``, newest first):
  ``<ms Redis time>\\n<body length>\\n<publication>``
"""

from __future__ import annotations

from typing import Any

from rtserver.bus.base import HistoryInfo, Recovery, StreamPosition

__all__ = ["accepted_on", "history_info", "parse_history_entry", "parse_publication",
           "recovery_from_reply"]


def parse_publication(data: bytes) -> tuple[int, str, bytes]:
    """``(seq, epoch, body)`` of a channel publication."""
    nl1 = data.index(b"\n", 1)
    nl2 = data.index(b"\n", nl1 + 1)
    nl3 = data.index(b"\n", nl2 + 1)
    return int(data[1:nl1]), data[nl1 + 1:nl2].decode(), data[nl3 + 1:]


def accepted_on(data: bytes, clock: bytes) -> float:
    """The accepted time of a channel publication when it was published on the monotonic
    clock ``clock`` (this machine's), else 0.0 (another machine's clock means nothing here)."""
    nl2 = data.index(b"\n", data.index(b"\n", 1) + 1)
    nl3 = data.index(b"\n", nl2 + 1)
    parts = data[nl2 + 1:nl3].rsplit(b" ", 2)
    if len(parts) != 3 or parts[1] != clock:
        return 0.0
    return float(parts[2])


def parse_history_entry(entry: bytes) -> tuple[int, bytes, int]:
    """``(seq, body, stored at ms)`` of a history entry."""
    nl1 = entry.index(b"\n")
    nl2 = entry.index(b"\n", nl1 + 1)
    seq, _, body = parse_publication(entry[nl2 + 1:])
    return seq, bytes(body), int(entry[:nl1])


def recovery_from_reply(since: StreamPosition, reply: Any) -> Recovery:
    """A :class:`Recovery` from the recover script's ``{epoch, seq, reason, entries}``."""
    raw_epoch, seq, raw_reason, entries = reply
    epoch = raw_epoch.decode() if isinstance(raw_epoch, bytes) else str(raw_epoch)
    reason = raw_reason.decode() if isinstance(raw_reason, bytes) else str(raw_reason)
    position = StreamPosition(epoch=epoch, seq=int(seq))
    if reason:
        return Recovery(position=position, publications=[], recovered=False, reason=reason)
    pubs = [parse_history_entry(e)[:2] for e in reversed(entries)]
    if since.epoch == "" or since.seq == position.seq or (pubs and pubs[0][0] == since.seq + 1):
        return Recovery(position=position, publications=pubs, recovered=True, reason=None)
    return Recovery(position=position, publications=pubs, recovered=False,
                    reason="history_trimmed")


async def history_info(client: Any, prefix: str, rooms: list[str]) -> list[HistoryInfo | None]:
    """The stored history of ``rooms`` (``P:hist:<room>``, ``P:hbytes:<room>``,
    ``P:ep:<room>``) in one pipeline; ``None`` for a room without an epoch key."""
    pipe = client.pipeline(transaction=False)
    for room in rooms:
        pipe.llen(f"{prefix}:hist:{room}")
        pipe.get(f"{prefix}:hbytes:{room}")
        pipe.lindex(f"{prefix}:hist:{room}", -1)
        pipe.lindex(f"{prefix}:hist:{room}", 0)
        pipe.get(f"{prefix}:ep:{room}")
    replies = await pipe.execute()
    out: list[HistoryInfo | None] = []
    for i, room in enumerate(rooms):
        held, size, oldest, newest, epoch = replies[5 * i:5 * i + 5]
        if epoch is None:
            out.append(None)
            continue
        out.append(HistoryInfo(
            room=room, epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch),
            held=int(held), bytes=int(size or 0),
            first_seq=parse_history_entry(oldest)[0] if oldest else None,
            last_seq=parse_history_entry(newest)[0] if newest else None))
    return out
