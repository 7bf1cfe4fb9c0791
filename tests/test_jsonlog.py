"""The background log writer: lines in order, none lost, the caller never waits for stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import orjson


def test_background_writer_keeps_every_line_in_order_and_flushes_at_exit() -> None:
    script = textwrap.dedent("""
        import sys, time
        from rtserver import jsonlog
        jsonlog.configure("info", writer="background")
        log = jsonlog.get_logger("t")
        t0 = time.perf_counter()
        for i in range(20000):
            log.info("line", n=i)
        sys.stdout.write(f"{time.perf_counter() - t0}\\n")
    """)
    # stderr is a pipe nobody reads until the caller says it is done: a writer blocking the
    # caller would stall forever once the pipe is full (64 KiB of the ~2 MB logged).
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    done: list[str] = []
    reader = threading.Thread(target=lambda: done.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    assert done and done[0].strip(), "the logging caller blocked on a full stderr pipe"
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = [orjson.loads(line) for line in err.splitlines()]
    assert [rec["n"] for rec in lines] == list(range(20000))


def _lines(write: object) -> list[bytes]:
    """The lines ``write(log)`` writes with the direct writer (as bytes, in order)."""
    import io

    from rtserver import jsonlog

    out = io.StringIO()
    jsonlog.configure("info", stream=out)
    try:
        write(jsonlog.get_logger("rtserver.test"))  # type: ignore[operator]
    finally:
        jsonlog.configure("info", stream=sys.stderr)
    return [line.encode() for line in out.getvalue().splitlines(keepends=True)]


def test_a_line_has_the_header_keys_first_then_the_fields_in_call_order() -> None:
    from datetime import UTC, datetime

    from rtserver import jsonlog

    jsonlog.set_worker(3)
    try:
        [a, b] = _lines(lambda log: (
            log.info("connection_state", connection_id="c1", user=None, state="connecting",
                     close_code=None, n=2**40, nested={1: "x"}, obj=object),
            log.warning("empty")))
    finally:
        jsonlog.set_worker(0)
    assert a.endswith(b"\n") and b.endswith(b"\n")
    rec = orjson.loads(a)
    assert list(rec) == ["ts", "level", "logger", "event", "worker", "log_seq",
                         "connection_id", "user", "state", "close_code", "n", "nested", "obj"]
    assert (rec["level"], rec["logger"], rec["event"], rec["worker"]) == (
        "info", "rtserver.test", "connection_state", 3)
    assert rec["nested"] == {"1": "x"} and rec["obj"] == repr(object) and rec["n"] == 2**40
    ts = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 5 and rec["ts"].endswith("Z")
    assert len(rec["ts"]) == len("2026-01-31T12:00:00.123Z")
    empty = orjson.loads(b)
    assert list(empty) == ["ts", "level", "logger", "event", "worker", "log_seq"]
    assert empty["log_seq"] == rec["log_seq"] + 1 and empty["level"] == "warning"


def test_a_field_named_like_a_header_key_replaces_it_in_place() -> None:
    [line] = _lines(lambda log: log.error("hub_worker_aborted", worker=7, reason="r"))
    rec = orjson.loads(line)
    assert list(rec) == ["ts", "level", "logger", "event", "worker", "log_seq", "reason"]
    assert rec["worker"] == 7


def test_secrets_are_masked_and_credentials_in_text_hidden() -> None:
    from rtserver.redact import MASK

    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    [line] = _lines(lambda log: log.info("x", token="abc", secret=1, path=f"/ws?token={token}",
                                         ok="plain"))
    rec = orjson.loads(line)
    assert rec["token"] == MASK and rec["secret"] == MASK and rec["ok"] == "plain"
    assert token not in line.decode() and "/ws?token=" in rec["path"]


def test_a_value_orjson_cannot_carry_still_gives_a_line_saying_so() -> None:
    [line] = _lines(lambda log: log.info("odd", big=2**70, text="a\ud800b"))
    rec = orjson.loads(line)
    assert rec["event"] == "odd" and rec["big"] == repr(2**70) and "log_encoding_error" in rec
    assert rec["text"] == ascii("a\ud800b")
