"""Progress of a bench run on stderr: a live line on a terminal, plain lines otherwise.

One line holds everything an operator watches during a long run: the phase,
connections opened of those asked, messages published and delivered, errors
so far and the elapsed time. On a terminal the line is redrawn in place
(``\\r`` and erase-to-end-of-line) every ``tty_interval`` seconds; when
stderr is a file or a pipe (CI logs), one plain line is written every
``plain_interval`` seconds (``--progress-interval``), and once at the end of
each phase.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress", "Snapshot", "format_snapshot"]

#: Redraw period (s) of the live line on a terminal (fixed: it is a display rate).
TTY_INTERVAL = 0.2
#: Default period (s) of the plain lines when stderr is not a terminal.
PLAIN_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one progress line shows."""

    target: str
    phase: str
    opened: int
    asked: int
    published: int
    delivered: int
    errors: int
    elapsed: float


def format_snapshot(s: Snapshot) -> str:
    """The text of one progress line (no line ending)."""
    return (f"bench {s.target} {s.phase:<8} connections {s.opened}/{s.asked}  "
            f"published {s.published}  delivered {s.delivered}  errors {s.errors}  "
            f"elapsed {s.elapsed:.1f}s")


class Progress:
    """Writes :class:`Snapshot` lines to ``stream`` at the rate its kind allows."""

    def __init__(self, enabled: bool, *, stream: TextIO | None = None,
                 plain_interval: float = PLAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if plain_interval <= 0:
            raise ValueError(f"progress interval {plain_interval} must be > 0. Required "
                             "action: pass a positive --progress-interval")
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = TTY_INTERVAL if self.tty else plain_interval
        self.clock = clock
        self.last = float("-inf")
        self.live = False

    def show(self, snap: Snapshot, force: bool = False) -> None:
        """Write ``snap`` if the interval has passed (or ``force``: the end of a phase)."""
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        text = format_snapshot(snap)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self.live = True
            if force:
                self.stream.write("\n")
                self.live = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Write a whole line (ending the live line first on a terminal)."""
        if self.live:
            self.stream.write("\n")
            self.live = False
        self.stream.write(text + "\n")
        self.stream.flush()
