"""The cost of one JSON log line on the event loop: ``direct`` vs ``loop`` writer.

``python -m rtserver.bench.log_micro [--lines N] [--per-tick K]`` runs, for each
sink (a regular file; a pipe read by ``cat``) and each writer, a child process
whose uvloop loop writes ``N`` info lines, ``K`` per loop tick (as connection
callbacks do), and reports the process CPU time per line (user + system, the
writes included; for ``loop`` until its buffer is empty) and the write calls
made (from ``/proc/self/io``'s ``syscw``). Ratios are loop / direct in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

import orjson

__all__ = ["main"]

WRITERS = ("direct", "loop")


def _syscw() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no syscw line")


def _child(writer: str, lines: int, per_tick: int) -> None:
    import uvloop

    from rtserver import jsonlog
    from rtserver.log_writer import LoopWriterSettings

    jsonlog.configure("info", writer="direct" if writer == "direct" else "loop",
                      loop_settings=LoopWriterSettings(warn_bytes=1 << 40, warn_interval=60.0))
    log = jsonlog.get_logger("rtserver.server")

    async def run() -> tuple[float, int]:
        w0, t0 = _syscw(), time.process_time()
        cid = "6f1c2a9e-8d4b-4b0e-9a57-3f5d2c1b7e10"
        for i in range(0, lines, per_tick):
            for j in range(per_tick):
                log.info("connection_state", connection_id=cid, user=cid, state="authenticated",
                         n=i + j)
            await asyncio.sleep(0)
        jsonlog.flush()
        return time.process_time() - t0, _syscw() - w0

    cpu, writes = uvloop.run(run())
    sys.stdout.write(orjson.dumps({"cpu_us_per_line": cpu / lines * 1e6,
                                   "writes": writes}).decode() + "\n")


def _measure(writer: str, sink: str, lines: int, per_tick: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "rtserver.bench.log_micro", "--child", writer,
            "--lines", str(lines), "--per-tick", str(per_tick)]
    if sink == "file":
        with tempfile.TemporaryFile() as f:
            out = subprocess.run(argv, stderr=f, stdout=subprocess.PIPE, check=True).stdout
    else:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            out = subprocess.run(argv, stderr=cat.stdin, stdout=subprocess.PIPE,
                                 check=True).stdout
        finally:
            assert cat.stdin is not None
            cat.stdin.close()
            cat.wait()
    result: dict[str, float] = orjson.loads(out)
    return result


def main(argv: list[str] | None = None) -> int:
    """Print one line per sink: CPU µs per line and write calls, direct vs loop."""
    p = argparse.ArgumentParser(prog="python -m rtserver.bench.log_micro")
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--per-tick", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="alternating runs per writer")
    p.add_argument("--child", choices=WRITERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.lines, args.per_tick)
        return 0
    for sink in ("file", "pipe"):
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for writer in WRITERS:
                r = _measure(writer, sink, args.lines, args.per_tick)
                if writer not in best or r["cpu_us_per_line"] < best[writer]["cpu_us_per_line"]:
                    best[writer] = r
        d, lp = best["direct"], best["loop"]
        print(f"sink={sink} lines={args.lines} per_tick={args.per_tick} (best of "
              f"{args.repeat}): direct {d['cpu_us_per_line']:.2f} us/line, "
              f"{d['writes']:.0f} writes; loop {lp['cpu_us_per_line']:.2f} us/line, "
              f"{lp['writes']:.0f} writes; loop/direct CPU "
              f"{lp['cpu_us_per_line'] / d['cpu_us_per_line']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
