"""The loop-integrated log writer (``server.log_writer = "loop"``): no thread, no blocking.

A JSON line written while this process's event loop runs is appended to an
in-process buffer; one callback per loop tick writes what is buffered to
stderr (fd 2) in as few ``write`` calls as the sink allows, in order. When
stderr cannot take more (a pipe nobody reads, a slow terminal) the rest stays
buffered and the loop is told when the descriptor is writable again; the
buffer is unbounded but accounted (``rtserver_log_buffered_bytes``,
``rtserver_log_writes_blocked_total``, a rate-limited ``log_buffer_high``
warning past ``server.log_buffer_warn_bytes``). Outside the loop (start-up,
after the loop stopped, ``atexit``, :meth:`LoopWriter.drain`) the buffer is
written synchronously first, then the line: nothing is reordered or dropped
while stderr is alive. A SIGKILL loses what is buffered.

O_NONBLOCK belongs to the open file description, which fd 2 shares with the
parent (the supervisor, a shell, a terminal), so it is never set on fd 2 itself
(nor is fd 2 registered with the event loop: uvloop's ``add_writer`` sets
O_NONBLOCK on the descriptor it watches). :func:`open_sink` picks, by what fd 2
is:

* a regular file: written directly (a file is always writable and cannot be
  polled), one ``write`` per tick;
* a pipe/FIFO or a terminal: ``/proc/self/fd/2`` is opened again, which gives
  this process its own description of the same pipe or terminal, made
  non-blocking; chunks of whole lines up to ``PIPE_BUF`` bytes, so that lines of
  several processes sharing the pipe never interleave;
* a socket (systemd's journal stream): ``send(MSG_DONTWAIT)``, non-blocking per
  call, on a duplicate of fd 2;
* a pipe or terminal that cannot be opened again (another user's pipe, no
  ``/proc``): ``shared`` mode, a zero-timeout ``poll`` before each chunk of at
  most ``PIPE_BUF`` bytes; said by a warning line at start, since a write can
  still block when another process fills the pipe between the poll and the write.

Waiting for writability uses a private ``epoll`` instance watching the sink; the
loop watches the epoll descriptor (ours), never fd 2.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import threading
import time
from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from threading import get_ident as _get_ident

from rtserver.metrics import REGISTRY

__all__ = ["LoopWriter", "LoopWriterSettings", "Sink", "open_sink"]

_active: LoopWriter | None = None


def _buffered() -> dict[tuple[str, ...], float]:
    return {(): float(_active.buffered if _active is not None else 0)}


BUFFERED_BYTES = REGISTRY.gauge(
    "rtserver_log_buffered_bytes", "Log bytes buffered because stderr could not take them yet",
    collect=_buffered)
WRITES_BLOCKED = REGISTRY.counter(
    "rtserver_log_writes_blocked_total",
    "Log writes that would have blocked the event loop (the bytes stayed buffered)")
WRITE_ERRORS = REGISTRY.counter(
    "rtserver_log_write_errors_total",
    "Log writes that failed (stderr closed by its reader); the bytes are lost", ("errno",))
LOST_BYTES = REGISTRY.counter(
    "rtserver_log_lost_bytes_total", "Log bytes discarded after a failed write (stderr gone)")


@dataclass(frozen=True)
class LoopWriterSettings:
    """``server.log_buffer_warn_bytes`` and ``server.log_buffer_warn_interval``."""

    warn_bytes: int
    warn_interval: float


class Sink:
    """fd 2 as the writer reaches it: ``kind`` (file, pipe, tty, socket, shared) and how.

    :meth:`write_some` never blocks (except ``file``, which cannot be polled, and the
    race ``shared`` documents); it returns the bytes taken, 0 when the sink is full.
    """

    def __init__(self, kind: str, fd: int, chunk: int | None, note: str,
                 sock: socket.socket | None = None) -> None:
        self.kind = kind
        #: The descriptor written to and watched: ours, except for ``file`` and ``shared``.
        self.fd = fd
        #: Largest write in bytes (whole lines), or None for one write of everything.
        self.chunk = chunk
        #: Why this kind was chosen (the ``log_writer`` start line).
        self.note = note
        self._sock = sock
        self._poll: select.poll | None = None
        if kind == "shared":
            self._poll = select.poll()
            self._poll.register(fd, select.POLLOUT)

    def write_some(self, data: memoryview) -> int:
        """Write a prefix of ``data`` without waiting; 0 when the sink cannot take any."""
        try:
            if self._sock is not None:
                return self._sock.send(data, socket.MSG_DONTWAIT)
            if self._poll is not None:
                events = self._poll.poll(0)
                if not events or not events[0][1] & select.POLLOUT:
                    return 0
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the descriptor this sink opened (none for ``file`` and ``shared``)."""
        if self._sock is not None:
            self._sock.close()
        elif self.kind in ("pipe", "tty"):
            os.close(self.fd)

    def wait_writable(self) -> None:
        """Block until the sink can take bytes (the synchronous paths only)."""
        if self.kind == "file":
            return
        p = select.poll()
        p.register(self.fd, select.POLLOUT)
        p.poll()


def open_sink(fd: int = 2, *, reopen: bool = True) -> Sink:
    """The :class:`Sink` for ``fd`` (see the module docstring); ``reopen=False`` forces
    ``shared`` for a pipe or terminal (tests)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return Sink("file", fd, None, "stderr is a regular file: written directly, once per "
                    "loop tick")
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))
        return Sink("socket", sock.fileno(), select.PIPE_BUF,
                    "stderr is a socket: send(MSG_DONTWAIT)", sock)
    kind = "pipe" if stat.S_ISFIFO(mode) else "tty"
    reason = "reopen disabled"
    if reopen:
        try:
            own = os.open(f"/proc/self/fd/{fd}",
                          os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            reason = f"cannot open /proc/self/fd/{fd} again: {exc.strerror}"
        else:
            if os.path.samestat(os.fstat(own), os.fstat(fd)):
                return Sink(kind, own, select.PIPE_BUF, f"stderr is a {kind}: opened again as "
                            "this process's own non-blocking description")
            os.close(own)
            reason = f"/proc/self/fd/{fd} opened another file"
    return Sink("shared", fd, select.PIPE_BUF, f"stderr is a {kind} ({reason}): poll before "
                "each write; a write may still block if another process fills it first")


class LoopWriter:
    """The buffer between the JSON loggers and the :class:`Sink` (see the module docstring).

    ``on_high(buffered, blocked, threshold)`` writes the rate-limited warning line (through
    :meth:`write`, so it takes its place in the order).
    """

    def __init__(self, sink: Sink, settings: LoopWriterSettings,
                 on_high: Callable[[int, int, int], None]) -> None:
        global _active
        self.sink = sink
        self.settings = settings
        self._on_high = on_high
        self._lines: deque[bytes] = deque()
        self._pending = memoryview(b"")
        #: Bytes buffered and not yet written (lines + the rest of a partial write).
        self.buffered = 0
        #: Writes that found the sink full.
        self.blocked = 0
        self._loop: AbstractEventLoop | None = None
        self._thread = 0
        self._scheduled = False
        self._epoll: select.epoll | None = None
        self._waiting = False
        self._next_warning = 0.0
        _active = self

    def write(self, data: bytes) -> None:
        """Queue ``data`` (whole lines) in the loop, or write it now outside the loop."""
        loop = self._loop
        # The bound loop running in this thread is the running loop; asked this way the
        # common case makes no getpid() call (asyncio's _get_running_loop makes one).
        if loop is None or self._thread != _get_ident() or not loop.is_running():
            loop = _get_running_loop()
        if loop is not None and loop is self._loop:
            self._lines.append(data)
            self.buffered += len(data)
            if not (self._scheduled or self._waiting):
                self._scheduled = True
                loop.call_soon(self._flush)
            if self.buffered > self.settings.warn_bytes:
                self._maybe_warn()
            return
        self._write_outside(data, loop)

    def _write_outside(self, data: bytes, loop: AbstractEventLoop | None) -> None:
        bound = self._loop
        if loop is not None:  # a loop runs in this thread: start buffering for it
            self.drain()
            self._bind(loop)
            self.write(data)
            return
        if (bound is not None and threading.get_ident() != self._thread
                and bound.is_running()):
            try:
                bound.call_soon_threadsafe(self.write, data)
                return
            except RuntimeError:  # closed between the check and the call: write it here
                self._unbind()
        self.drain()
        self._lines.append(data)
        self.buffered += len(data)
        self.drain()

    def _bind(self, loop: AbstractEventLoop) -> None:
        self._unbind()
        self._loop = loop
        self._thread = threading.get_ident()

    def _unbind(self) -> None:
        loop, self._loop = self._loop, None
        self._scheduled = False
        if (self._waiting and loop is not None and self._epoll is not None
                and not loop.is_closed()):
            loop.remove_reader(self._epoll.fileno())
        self._waiting = False

    def drain(self) -> None:
        """Write everything buffered now, waiting for stderr if it must (outside the loop:
        start-up failures, the end of a worker, ``atexit``)."""
        while self.buffered:
            if self._write_available():
                self.sink.wait_writable()
        if self._loop is not None and not self._loop.is_running():
            self._unbind()

    def _flush(self) -> None:
        self._scheduled = False
        if self._write_available():
            self._wait_in_loop()
        elif self._waiting:
            self._stop_waiting()

    def _on_writable(self) -> None:
        if not self._write_available():
            self._stop_waiting()

    def _write_available(self) -> bool:
        """Write until empty (False) or the sink is full (True)."""
        sink = self.sink
        lines = self._lines
        while self.buffered:
            if not self._pending:
                self._pending = memoryview(self._next_chunk(lines, sink.chunk))
            try:
                n = sink.write_some(self._pending)
            except OSError as exc:
                self._lost(exc)
                return False
            if n == 0:
                self.blocked += 1
                WRITES_BLOCKED.inc()
                return True
            self._pending = self._pending[n:]
            self.buffered -= n
        return False

    @staticmethod
    def _next_chunk(lines: deque[bytes], limit: int | None) -> bytes:
        if limit is None or len(lines) == 1:
            data = b"".join(lines)
            lines.clear()
            return data
        parts = [lines.popleft()]
        size = len(parts[0])
        while lines and size + len(lines[0]) <= limit:
            line = lines.popleft()
            parts.append(line)
            size += len(line)
        return b"".join(parts)

    def _lost(self, exc: OSError) -> None:
        WRITE_ERRORS.inc(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
        LOST_BYTES.inc(amount=float(self.buffered))
        self._lines.clear()
        self._pending = memoryview(b"")
        self.buffered = 0

    def _wait_in_loop(self) -> None:
        loop = self._loop
        if self._waiting or loop is None:
            return
        if self._epoll is None:
            self._epoll = select.epoll()
            try:
                self._epoll.register(self.sink.fd, select.EPOLLOUT)
            except OSError:  # a sink epoll cannot watch (never full in practice): write it now
                self._epoll.close()
                self._epoll = None
                self.drain()
                return
        self._waiting = True
        loop.add_reader(self._epoll.fileno(), self._on_writable)

    def _stop_waiting(self) -> None:
        self._waiting = False
        if self._loop is not None and self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())

    def _maybe_warn(self) -> None:
        now = time.monotonic()
        if now < self._next_warning:
            return
        self._next_warning = now + self.settings.warn_interval
        self._on_high(self.buffered, self.blocked, self.settings.warn_bytes)
