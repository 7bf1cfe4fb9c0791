"""The chaos invariant checker and the stream tracker on made-up streams (no server)."""

from __future__ import annotations

import random
from typing import Any

import orjson

from rtserver.bench.chaos_check import CheckResult, check_stream
from rtserver.bench.streams import EV_DOWN, EV_GAP, EV_MSG, EV_SUB, FullJitterBackoff, StreamTracker

R = "bench:r"
E = "ep1"


def sub(seq: int, epoch: str = E, since: tuple[str, int] | None = None,
        recovered: bool | None = None, replayed: int | None = None,
        reason: str | None = None) -> tuple[Any, ...]:
    return (EV_SUB, epoch, seq, since[0] if since else None, since[1] if since else None,
            recovered, replayed, reason)


def msg(seq: int, pid: str | None = None) -> tuple[Any, ...]:
    return (EV_MSG, seq, pid or f"p{seq}")


def run(events: list[tuple[Any, ...]], final: tuple[str, int] | None = None,
        acks: dict[str, tuple[str, int]] | None = None) -> CheckResult:
    if acks is None:
        acks = {f"p{i}": (R, i) for i in range(1, 50)}
    res = CheckResult()
    check_stream("c0/r", R, events, acks, set(acks), final, res)
    return res


def test_clean_stream_passes() -> None:
    res = run([sub(0), msg(1), msg(2), msg(3)], final=(E, 3))
    assert res.ok and res.delivered == 3 and res.silent_gaps == 0


def test_silent_gap_is_caught() -> None:
    res = run([sub(0), msg(1), msg(3)], final=(E, 3))
    assert not res.ok and res.silent_gaps == 1
    assert "silent gap 2..2" in res.problems[0]


def test_announced_gap_is_not_silent() -> None:
    res = run([sub(0), msg(1), (EV_GAP, E, 2, 4, "history_trimmed"), msg(5)], final=(E, 5))
    assert res.ok and res.silent_gaps == 0 and res.explicit_gaps == 1 and res.gap_frames == 1


def test_gap_frame_starting_too_late_leaves_the_hole_silent() -> None:
    res = run([sub(0), msg(1), (EV_GAP, E, 4, 4, "history_trimmed"), msg(5)], final=(E, 5))
    assert res.silent_gaps == 2  # 2 and 3 were never announced


def test_recovered_false_covers_the_disconnected_window() -> None:
    events = [sub(0), msg(1), (EV_DOWN,),
              sub(5, since=(E, 1), recovered=False, reason="history_trimmed"), msg(6)]
    res = run(events, final=(E, 6))
    assert res.ok and res.not_recovered == 1 and res.explicit_gaps == 1


def test_recovery_replays_the_window() -> None:
    events = [sub(0), msg(1), (EV_DOWN,), sub(3, since=(E, 1), recovered=True, replayed=2),
              msg(2), msg(3), msg(4)]
    res = run(events, final=(E, 4))
    assert res.ok and res.recovered == 1 and res.replayed == 2 and res.delivered == 4


def test_recovery_that_skips_a_message_is_a_silent_gap() -> None:
    events = [sub(0), msg(1), (EV_DOWN,), sub(3, since=(E, 1), recovered=True, replayed=2),
              msg(3), msg(4)]
    assert run(events, final=(E, 4)).silent_gaps == 1


def test_window_of_a_disconnection_without_recovery_is_silent() -> None:
    # Reconnected and told recovered:true with a replay, but nothing was replayed and the
    # stream jumps: the window is silent.
    events = [sub(0), msg(1), (EV_DOWN,), sub(1, since=(E, 1), recovered=True, replayed=0),
              msg(5)]
    assert run(events, final=(E, 5)).silent_gaps == 3


def test_duplicates_and_reordering_are_caught() -> None:
    assert run([sub(0), msg(1), msg(2), msg(2)], final=(E, 2)).duplicates == 1
    # The same payload under another seq (a publish applied twice) is a duplicate too.
    acks = {"p1": (R, 1), "p2": (R, 2)}
    assert run([sub(0), msg(1), msg(2, "p1")], final=(E, 2), acks=acks).duplicates == 1
    res = run([sub(0), msg(1), msg(3), msg(2)], final=(E, 3))
    assert res.out_of_order == 1 and res.silent_gaps == 0 and not res.ok


def test_epoch_change_announced_by_a_gap_frame() -> None:
    events = [sub(0), msg(1), (EV_GAP, "ep2", 1, 7, "epoch_changed"), msg(8)]
    res = run(events, final=("ep2", 8))
    assert res.ok and res.explicit_gaps == 1


def test_unannounced_epoch_change_fails_at_the_end() -> None:
    res = run([sub(0), msg(1), msg(2)], final=("ep2", 2))
    assert res.silent_gaps == 1 and not res.ok


def test_stream_that_stops_short_of_the_final_publication() -> None:
    res = run([sub(0), msg(1)], final=(E, 4))
    assert res.silent_gaps == 3


def test_payload_with_another_seq_than_its_ack() -> None:
    res = run([sub(0), msg(1, "p2")], final=(E, 1), acks={"p2": (R, 2)})
    assert res.ack_mismatch == 1 and not res.ok
    res = run([sub(0), msg(1, "never-sent")], final=(E, 1), acks={})
    assert res.unknown_payloads == 1


def test_since_must_be_the_stream_position() -> None:
    events = [sub(0), msg(1), (EV_DOWN,), sub(3, since=(E, 0), recovered=True, replayed=3)]
    assert run(events).protocol_errors == 1


def test_tracker_resubscribes_every_room_with_since() -> None:
    tr = StreamTracker(["bench:a", "bench:b"])
    first = orjson.loads(tr.subscribe_frame())
    assert first["rooms"] == [{"room": "bench:a"}, {"room": "bench:b"}]
    tr.on_subscribed({"room": "bench:a", "epoch": E, "seq": 4})
    tr.on_subscribed({"room": "bench:b", "epoch": E, "seq": 0})
    tr.on_message("bench:a", 5, "x")
    tr.on_gap({"room": "bench:b", "epoch": "ep2", "from_seq": 1, "to_seq": 3,
               "reason": "epoch_changed", "action": "Required action: reload"})
    tr.connection_lost()
    again = orjson.loads(tr.subscribe_frame())
    assert again == {"type": "subscribe", "id": "sub", "rooms": [
        {"room": "bench:a", "since": {"epoch": E, "seq": 5}},
        {"room": "bench:b", "since": {"epoch": "ep2", "seq": 3}}]}
    tr.on_subscribed({"room": "bench:a", "epoch": E, "seq": 7, "recovered": True,
                      "replayed": 2})
    tr.on_subscribed({"room": "bench:b", "epoch": "ep3", "seq": 9, "recovered": False,
                      "reason": "epoch_changed"})
    assert tr.recovered == 1 and tr.replayed == 2 and tr.not_recovered == {"epoch_changed": 1}
    assert tr.position("bench:a") == (E, 5)  # the replay moves it
    assert tr.position("bench:b") == ("ep3", 9)
    assert tr.log["bench:a"][-1][0] == EV_SUB and tr.log["bench:a"][-2] == (EV_DOWN,)


def test_full_jitter_backoff_is_bounded_seeded_and_counted() -> None:
    a = FullJitterBackoff(0.1, 1.0, random.Random(7))
    b = FullJitterBackoff(0.1, 1.0, random.Random(7))
    da = [a.next_delay(0) for _ in range(8)]
    assert da == [b.next_delay(0) for _ in range(8)]
    caps = [min(1.0, 0.1 * 2 ** n) for n in range(8)]
    assert all(0.0 <= d <= c for d, c in zip(da, caps, strict=True))
    assert a.attempts == 8
    a.succeeded(0)
    assert a.consecutive == {} and a.attempts == 8
    assert a.next_delay(0) <= 0.1


def test_recovered_false_reasons_must_fit_the_positions() -> None:
    down = [sub(0), msg(1), (EV_DOWN,)]
    ok = run([*down, sub(4, "ep2", since=(E, 1), recovered=False, reason="epoch_changed")])
    assert ok.protocol_errors == 0 and ok.reasons == {"epoch_changed": 1}
    # The position came from the server: "ahead of the room" means the room went back.
    ahead = run([*down, sub(0, since=(E, 1), recovered=False, reason="invalid_position")])
    assert ahead.protocol_errors == 1
    same = run([*down, sub(4, since=(E, 1), recovered=False, reason="epoch_changed")])
    assert same.protocol_errors == 1
    other = run([*down, sub(4, "ep2", since=(E, 1), recovered=False, reason="history_trimmed")])
    assert other.protocol_errors == 1


def test_chaos_refuses_target_options() -> None:
    from rtserver.bench.cli import main

    assert main(["chaos", "--spawn"]) == 2
    assert main(["chaos", "--url", "ws://127.0.0.1:1/ws"]) == 2
    assert main(["chaos", "--clients", "0"]) == 2
