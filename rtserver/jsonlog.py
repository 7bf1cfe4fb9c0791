"""Structured JSON logging: one JSON object per line on stderr.

Usage::

    from rtserver.jsonlog import get_logger
    log = get_logger("rtserver.hub")
    log.info("connection_state", connection_id=cid, state="open")

Every line carries ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``event``,
``worker``, ``log_seq`` (this process's line count: 1, 2, ...; a gap is a lost line)
and the given fields. Field formatting happens only when the level
is enabled, so a disabled debug line costs one comparison.

How a line reaches stderr is :func:`configure`'s ``writer``:

* ``"direct"``: written by the caller, synchronously (CLI commands, tests);
* ``"loop"`` (server processes, the default of ``server.log_writer``): the
  loop-integrated writer of :mod:`rtserver.log_writer`, no thread: in the event
  loop a line is buffered and written with the others once per loop tick, never
  waiting for a slow stderr; outside the loop it is written at once, after
  whatever is buffered;
* ``"background"``: an in-process queue that one writer thread empties in order,
  in batches.

With ``loop`` and ``background`` nothing is dropped (the buffer grows while
stderr is slow) and every buffered line is written before the process exits
(``atexit``) or when :func:`flush` is called.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
import time
from typing import Any, Literal, TextIO

import orjson

from rtserver.log_writer import LoopWriter, LoopWriterSettings, open_sink
from rtserver.redact import MASK, redact_text

__all__ = ["JsonLogger", "LogWriter", "SummaryLog", "configure", "flush", "get_logger",
           "set_worker", "utc_timestamp", "utc_timestamp_bytes"]

_worker_id = 0
#: Lines written by this process so far: each line's ``log_seq`` (a gap shows a lost line).
_seq = 0
_stream: TextIO = sys.stderr
_level = logging.INFO


class _BackgroundWriter:
    """One thread writing queued lines to the stream, in order, in batches."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str | threading.Event] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rtserver-log-writer",
                                        daemon=True)
        self._thread.start()

    def write(self, text: str) -> None:
        self._queue.put(text)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every line queued so far is written; False after ``timeout``."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            batch: list[str] = []
            events: list[threading.Event] = []
            while True:
                if isinstance(item, threading.Event):
                    events.append(item)
                else:
                    batch.append(item)
                if len(batch) >= 512:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                _emit("".join(batch))
            for event in events:
                event.set()


_writer: _BackgroundWriter | None = None
_loop_writer: LoopWriter | None = None


def _emit(text: str) -> None:
    try:
        _stream.write(text)
        _stream.flush()
    except (OSError, ValueError) as exc:
        # The log stream itself is gone (closed pipe): say so on the
        # process's last resort, stderr's file descriptor.
        fallback = sys.__stderr__
        if fallback is not None:
            fallback.write(f"rtserver: log stream unavailable ({exc}): {text!r}\n")


def flush(timeout: float = 10.0) -> bool:
    """Write every queued line now (a no-op with the direct writer).

    ``timeout`` bounds the wait for the background thread only; the loop writer
    writes its buffer here, waiting for stderr as long as it must (as a direct
    write would).
    """
    if _loop_writer is not None:
        _loop_writer.drain()
    return _writer.flush(timeout) if _writer is not None else True


#: websockets' per-connection info lines (one per handshake, one per ``curl /healthz``):
#: written at debug. rtserver's own connection_state lines say the same with context.
_WEBSOCKETS_CHATTER = frozenset({
    "connection open", "connection closed", "HTTP response sent (%d %s)",
    "connection rejected (%d %s)",
})
#: Field names whose values are never written (whatever the level).
_SECRET_FIELDS = frozenset({"token", "secret", "password", "jwt_secret", "authorization"})


class _StdlibBridge(logging.Handler):
    """Writes the standard library's log records (websockets, asyncio, asyncpg) as JSON lines.

    Every message and traceback is passed through :func:`rtserver.redact.redact_text`
    (``token`` query values, ``Authorization`` headers, JWTs, URL passwords), and
    websockets' per-connection info chatter is demoted to debug.
    """

    def emit(self, record: logging.LogRecord) -> None:
        levelno, levelname = record.levelno, record.levelname.lower()
        if (levelno == logging.INFO and record.name.startswith("websockets")
                and record.msg in _WEBSOCKETS_CHATTER):
            levelno, levelname = logging.DEBUG, "debug"
        if levelno < _level:
            return
        fields: dict[str, Any] = {"message": redact_text(record.getMessage())}
        if record.exc_info:
            fields["exception"] = redact_text(self.format(record).split("\n", 1)[-1])
        JsonLogger(record.name)._write(levelno, levelname, "library_log", fields)


LogWriter = Literal["direct", "loop", "background"]


def configure(level: str = "info", stream: TextIO | None = None, *,
              writer: LogWriter = "direct",
              loop_settings: LoopWriterSettings | None = None) -> None:
    """Set the minimum level (debug, info, warning, error), the output stream and writer.

    Library log records (the standard ``logging`` module) are written as JSON
    lines too, at the same minimum level. ``writer`` (``server.log_writer``): see
    the module docstring; ``"loop"`` writes to stderr's descriptor (not to
    ``stream``) and needs ``loop_settings``.
    """
    global _level, _stream, _writer, _loop_writer
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(
            f"unknown log level {level!r}. Required action: use one of debug, info, warning, error"
        )
    _level = value
    if stream is not None:
        _stream = stream
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(value)
    if writer == "background" and _writer is None:
        _writer = _BackgroundWriter()
        atexit.register(flush)
    if writer != "loop" and _loop_writer is not None:  # back to direct/background
        _loop_writer.drain()
        _loop_writer.sink.close()
        _loop_writer = None
    if writer == "loop" and _loop_writer is None:
        if loop_settings is None or stream not in (None, sys.stderr):
            raise ValueError("writer='loop' writes to stderr's descriptor and needs "
                             "loop_settings. Required action: pass loop_settings, no stream")
        sys.stderr.flush()
        sink = open_sink(2)
        _loop_writer = LoopWriter(sink, loop_settings, _buffer_high)
        atexit.register(flush)
        log = JsonLogger("rtserver.jsonlog")
        if sink.kind == "shared":
            log.warning("log_writer", writer="loop", sink=sink.kind, note=sink.note,
                        action="Required action: give the server a stderr it can open "
                        "again (a pipe or terminal it owns), a file or a socket, or accept "
                        "that a log write may block")
        else:
            log.info("log_writer", writer="loop", sink=sink.kind, note=sink.note)


def _buffer_high(buffered: int, blocked: int, threshold: int) -> None:
    JsonLogger("rtserver.jsonlog").warning(
        "log_buffer_high", buffered_bytes=buffered, writes_blocked=blocked,
        threshold=threshold,
        note="stderr is not taking log lines as fast as they come; they are buffered in "
        "memory (none dropped) and written when it does (rtserver_log_buffered_bytes)",
        action="Required action: make the reader of the server's stderr keep up (journald, "
        "the pipe's reader, the terminal)")


def set_worker(worker: int) -> None:
    """Stamp ``worker`` on every following line of this process."""
    global _worker_id
    _worker_id = worker


def _default(obj: Any) -> Any:
    return repr(obj)


#: The keys every line starts with, in this order.
_HEADER_KEYS = frozenset({"ts", "level", "logger", "event", "worker", "log_seq"})
_LINE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
#: (level, event, worker) -> the bytes of a line between ``ts`` and ``log_seq``'s value.
_heads: dict[tuple[str, str, int], bytes] = {}
#: (millisecond since the epoch, its ISO-8601 text, the same as bytes): formatted once per
#: millisecond, replaced as one tuple (a reader in another thread sees a matching pair).
_ts_cache: tuple[int, str, bytes] = (-1, "", b"")
#: (second since the epoch, its ``YYYY-MM-DDTHH:MM:SS`` text), formatted once per second.
_second_cache: tuple[int, str] = (-1, "")


def _ts_now() -> tuple[int, str, bytes]:
    global _ts_cache, _second_cache
    ms = time.time_ns() // 1_000_000
    cached = _ts_cache
    if cached[0] != ms:
        secs, milli = divmod(ms, 1000)
        second = _second_cache
        if second[0] != secs:
            second = _second_cache = (secs, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                          time.gmtime(secs)))
        text = f"{second[1]}.{milli:03d}Z"
        cached = _ts_cache = (ms, text, text.encode())
    return cached


def utc_timestamp() -> str:
    """Now as ISO-8601 UTC with milliseconds and a Z suffix (``2026-01-31T12:00:00.123Z``,
    the wall clock truncated to the millisecond, as ``datetime.now(UTC).isoformat(
    timespec="milliseconds")`` gives); formatted once per millisecond."""
    return _ts_now()[1]


def utc_timestamp_bytes() -> bytes:
    """:func:`utc_timestamp` as ASCII bytes."""
    return _ts_now()[2]


class JsonLogger:
    """A named logger writing one JSON object per event."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def enabled(self, level: int) -> bool:
        """Whether a line at ``level`` would be written."""
        return level >= _level

    def _write(self, level: int, levelname: str, event: str, fields: dict[str, Any]) -> None:
        # ``fields`` is the caller's own keyword dict (never kept): cleaned in place and
        # serialized once; the fixed head of the line is cached per (level, event, worker).
        global _seq
        if level < _level:
            return
        _seq += 1
        for key, value in fields.items():
            if key in _SECRET_FIELDS:
                fields[key] = MASK
            elif isinstance(value, str) and ("@" in value or "eyJ" in value
                                             or "token=" in value or "uthorization" in value):
                fields[key] = redact_text(value)
        ts = utc_timestamp_bytes()
        line: bytes | None = None
        if not _HEADER_KEYS.isdisjoint(fields):
            pass  # a field named like a header key replaces it: the general path below
        elif not fields:
            line = b'{"ts":"%b%b%d}\n' % (ts, self._head(levelname, event), _seq)
        else:
            try:
                body = orjson.dumps(fields, default=_default, option=_LINE_OPTIONS)
            except (TypeError, orjson.JSONEncodeError):
                pass  # the general path says which value could not be encoded
            else:
                line = b'{"ts":"%b%b%d,%b' % (ts, self._head(levelname, event), _seq,
                                              body[1:])
        if line is None:
            line = self._record_line(ts.decode(), levelname, event, fields)
        if _loop_writer is not None:
            _loop_writer.write(line)
            return
        text = line.decode()
        if _writer is not None:
            _writer.write(text)
        else:
            _emit(text)

    def _head(self, levelname: str, event: str) -> bytes:
        """The line's bytes between ``ts`` and the value of ``log_seq``."""
        key = (levelname, event, _worker_id)
        head = _heads.get(key)
        if head is None:
            if len(_heads) >= 1024:  # events are code constants: a bound, never reached
                _heads.clear()
            head = _heads[key] = b'","level":%b,"logger":%b,"event":%b,"worker":%d,"log_seq":' % (
                orjson.dumps(levelname), orjson.dumps(self.name), orjson.dumps(event),
                _worker_id)
        return head

    def _record_line(self, ts: str, levelname: str, event: str,
                     fields: dict[str, Any]) -> bytes:
        """The line built as one dict (a field named like a header key replaces it in
        place), or, for a value orjson cannot carry, every field as its ASCII repr."""
        record: dict[str, Any] = {
            "ts": ts,
            "level": levelname,
            "logger": self.name,
            "event": event,
            "worker": _worker_id,
            "log_seq": _seq,
        }
        record.update(fields)
        try:
            return orjson.dumps(record, default=_default, option=_LINE_OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            # A value orjson cannot carry (an integer beyond 64 bits, a string with
            # a lone surrogate): the line is still written, with every field as
            # its ASCII repr, and says so.
            safe = {str(k): v if k in _HEADER_KEYS else ascii(v) for k, v in record.items()}
            safe["log_encoding_error"] = str(exc)
            return orjson.dumps(safe, option=orjson.OPT_APPEND_NEWLINE)

    def lifecycle(self, event: str, **fields: Any) -> None:
        """Write an info line whatever the level: start, listening, signals, stop.

        Tools (the bench's ``--spawn``, supervisors, tests) read these lines, so
        ``log_level = "warning"`` must not hide them.
        """
        self._write(max(logging.INFO, _level), "info", event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        """Write a debug line."""
        self._write(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Write an info line."""
        self._write(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Write a warning line."""
        self._write(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Write an error line."""
        self._write(logging.ERROR, "error", event, fields)


class SummaryLog:
    """Counts repeated events by code and writes one warning line per interval.

    For events a client can cause at will (malformed frames): the first one
    is written at once, later ones are counted and written as one line
    (``counts`` by code, ``interval``) once ``interval`` seconds have passed
    since the previous line. One instance per component (per node), not
    module state.
    """

    __slots__ = ("_counts", "_event", "_log", "_next")

    def __init__(self, logger: JsonLogger, event: str) -> None:
        self._log = logger
        self._event = event
        self._counts: dict[str, int] = {}
        self._next = 0.0

    def note(self, code: str, now: float, interval: float) -> None:
        """Count one event with ``code`` at monotonic time ``now``."""
        counts = self._counts
        counts[code] = counts.get(code, 0) + 1
        if now >= self._next:
            self._next = now + interval
            self._log.warning(self._event, counts=dict(counts), total=sum(counts.values()),
                              interval=interval,
                              note="counts since the previous summary line; every failure "
                              "was answered with an error frame and counted in "
                              "rtserver_errors_total")
            counts.clear()


def get_logger(name: str) -> JsonLogger:
    """Return the JSON logger called ``name``."""
    return JsonLogger(name)
