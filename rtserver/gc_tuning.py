"""Garbage-collector settings of a server process (``server.gc_young_threshold``).

A connect storm allocates a few hundred objects per connection, most of them
long-lived (the connection, its protocol, its handler task). With CPython's
default young-generation threshold (700 allocations) the collector runs every
few connections and each run of the older generations walks every connection
already open: measured with ``rtserver bench connect-storm --workers 2
--connections 10000`` (docs/benchmarks.md, "Connect storm and memory (issue 15)")
that was about a third of a worker's CPU. A larger threshold runs it less often;
:func:`gc.freeze` moves everything allocated at start-up (modules, config, the
node's tables) out of the collector's sight for good.
"""

from __future__ import annotations

import gc

from rtserver import jsonlog

__all__ = ["tune_gc"]

log = jsonlog.get_logger("rtserver.gc")


def tune_gc(young_threshold: int) -> None:
    """Freeze the start-up objects and set the young generation's threshold.

    The older generations keep CPython's default thresholds. Logged once
    (``gc_tuned``) with the thresholds in effect and the number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    log.info("gc_tuned", threshold=list(gc.get_threshold()), frozen=gc.get_freeze_count())
