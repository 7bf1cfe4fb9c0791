"""The chaos scenario's invariant: no silent gap, no duplicate, no reordering.

Input: per client and room the event log of a :class:`~rtserver.bench.streams.StreamTracker`
(``subscribed`` answers, ``message`` seqs with payload ids, ``gap`` frames, connection
ends), the publishers' acknowledgements (payload id -> room and seq) and each room's
final publication (published after the faults stopped; every stream must reach it).

A stream is walked from its first ``subscribed`` on. Its position ``(epoch, seq)``
moves with every message; a message must carry the next seq. A ``subscribed`` with
``recovered: true`` keeps the position (the replay continues it); ``recovered:
false`` and ``gap`` frames move it explicitly (counted as *explicit gaps*). So
every publication after the subscribe position is either delivered once and in
order, or covered by an explicit announcement. Anything else is counted:

* ``silent_gaps``: seqs skipped without an announcement, plus seqs between the
  stream's last position and the room's final publication (never delivered);
* ``duplicates``: a position or payload id delivered twice on one stream;
* ``out_of_order``: a message behind the stream's position that it had not had;
* ``ack_mismatch``: a payload delivered with another seq or room than its ack said;
* ``protocol_errors``: answers that break the protocol (``since`` not echoed
  correctly, a replay count that does not match, a message before ``subscribed``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rtserver.bench.streams import EV_DOWN, EV_GAP, EV_MSG, EV_SUB

__all__ = ["CheckResult", "check_stream", "check_streams"]

MAX_PROBLEMS = 50


@dataclass
class CheckResult:
    """Counters of the invariant check (summed over streams) and the first problems."""

    streams: int = 0
    delivered: int = 0
    recovered: int = 0
    replayed: int = 0
    explicit_gaps: int = 0
    not_recovered: int = 0
    #: ``recovered: false`` answers and gap frames by reason.
    reasons: dict[str, int] = field(default_factory=dict)
    gap_frames: int = 0
    silent_gaps: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    ack_mismatch: int = 0
    unknown_payloads: int = 0
    protocol_errors: int = 0
    problems: list[str] = field(default_factory=list)
    #: Labels of the streams with a finding (their event logs go to the report directory).
    failed_streams: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was silent, duplicated, reordered or inconsistent."""
        return not (self.silent_gaps or self.duplicates or self.out_of_order
                    or self.ack_mismatch or self.unknown_payloads or self.protocol_errors)

    def problem(self, text: str) -> None:
        """Remember one problem description (the first :data:`MAX_PROBLEMS`)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (with ``ok``)."""
        d = asdict(self)
        d["ok"] = self.ok
        return d


def check_stream(name: str, room: str, events: list[tuple[Any, ...]],
                 acks: dict[str, tuple[str, int]], sent: set[str],
                 final: tuple[str, int] | None, res: CheckResult) -> None:
    """Walk one stream (``name``: client/room label) and add its counts to ``res``.

    ``acks``: payload id -> (room, seq) from the publishers; ``sent``: every payload id
    published (acked or not); ``final``: the room's final publication ``(epoch, seq)``
    the stream must reach, or None to skip that check.
    """
    res.streams += 1
    pos: tuple[str, int] | None = None
    seen: set[tuple[str, int]] = set()
    pids: set[str] = set()
    missing: set[tuple[str, int]] = set()
    for ev in events:
        kind = ev[0]
        if kind == EV_SUB:
            _, epoch, seq, since_epoch, since_seq, rec, replayed, reason = ev
            if since_epoch is None:
                if pos is not None:
                    res.protocol_errors += 1
                    res.problem(f"{name}: resubscribed without since from {pos}")
                pos = (epoch, seq)
            elif pos is None or (since_epoch, since_seq) != pos:
                res.protocol_errors += 1
                res.problem(f"{name}: since {(since_epoch, since_seq)} is not the stream's "
                            f"position {pos}")
                pos = (epoch, seq)
            elif rec is True:
                res.recovered += 1
                res.replayed += int(replayed or 0)
                if epoch != since_epoch or seq - since_seq != replayed:
                    res.protocol_errors += 1
                    res.problem(f"{name}: recovered from {pos} to {(epoch, seq)} with "
                                f"replayed={replayed}")
            elif rec is False:
                res.explicit_gaps += 1
                res.not_recovered += 1
                res.reasons[str(reason)] = res.reasons.get(str(reason), 0) + 1
                if reason == "invalid_position" or (reason == "epoch_changed") == (
                        epoch == since_epoch):
                    # The position came from the server in that epoch: it cannot be ahead
                    # of the room; an epoch change must name a new epoch (and only then).
                    res.protocol_errors += 1
                    res.problem(f"{name}: since {pos} answered recovered:false {reason} at "
                                f"{(epoch, seq)}")
                pos = (epoch, seq)
            else:
                res.protocol_errors += 1
                res.problem(f"{name}: subscribe with since answered without recovered "
                            f"({reason})")
                pos = (epoch, seq)
        elif kind == EV_MSG:
            _, seq, pid = ev
            if pos is None:
                res.protocol_errors += 1
                res.problem(f"{name}: message seq {seq} before subscribed")
                continue
            key = (pos[0], seq)
            if key in seen or pid in pids:
                res.duplicates += 1
                res.problem(f"{name}: duplicate seq {seq} payload {pid} at {pos}")
                continue
            if seq > pos[1] + 1:
                missing.update((pos[0], k) for k in range(pos[1] + 1, seq))
                res.problem(f"{name}: silent gap {pos[1] + 1}..{seq - 1} in epoch {pos[0]}")
            elif seq <= pos[1]:
                missing.discard(key)
                res.out_of_order += 1
                res.problem(f"{name}: seq {seq} arrived behind position {pos}")
            seen.add(key)
            pids.add(pid)
            res.delivered += 1
            ack = acks.get(pid)
            if ack is not None:
                if ack != (room, seq):
                    res.ack_mismatch += 1
                    res.problem(f"{name}: payload {pid} delivered as {room} seq {seq}, "
                                f"acked as {ack}")
            elif pid not in sent:
                res.unknown_payloads += 1
                res.problem(f"{name}: payload {pid!r} was never published")
            pos = (pos[0], max(pos[1], seq))
        elif kind == EV_GAP:
            _, epoch, from_seq, to_seq, reason = ev
            res.explicit_gaps += 1
            res.gap_frames += 1
            res.reasons[f"gap {reason}"] = res.reasons.get(f"gap {reason}", 0) + 1
            if pos is not None and epoch == pos[0]:
                if from_seq > pos[1] + 1:
                    missing.update((epoch, k) for k in range(pos[1] + 1, from_seq))
                    res.problem(f"{name}: gap frame from {from_seq} leaves "
                                f"{pos[1] + 1}..{from_seq - 1} unannounced")
                pos = (epoch, max(pos[1], to_seq))
            else:
                # A new epoch: everything after the old position is announced lost.
                pos = (epoch, to_seq)
        elif kind != EV_DOWN:
            res.protocol_errors += 1
            res.problem(f"{name}: unknown event {ev!r}")
    res.silent_gaps += len(missing)
    if final is None:
        return
    if pos is None:
        res.silent_gaps += 1
        res.problem(f"{name}: never subscribed, final publication {final} not delivered")
    elif pos[0] != final[0]:
        res.silent_gaps += 1
        res.problem(f"{name}: ended at {pos}, the final publication is {final} (no "
                    "announcement of the epoch change)")
    elif pos[1] < final[1]:
        res.silent_gaps += final[1] - pos[1]
        res.problem(f"{name}: ended at {pos}, {final[1] - pos[1]} publications up to the "
                    f"final {final} never arrived")


def check_streams(streams: dict[str, tuple[str, list[tuple[Any, ...]]]],
                  acks: dict[str, tuple[str, int]], sent: set[str],
                  finals: dict[str, tuple[str, int]]) -> CheckResult:
    """Check every stream: ``streams`` maps a label to ``(room, events)``."""
    res = CheckResult()
    for name, (room, events) in sorted(streams.items()):
        before = len(res.problems), res.ok
        check_stream(name, room, events, acks, sent, finals.get(room), res)
        if (len(res.problems), res.ok) != before:
            res.failed_streams.append(name)
    return res
