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
