"""A node's background tasks: every one referenced, supervised, and ended at shutdown.

``run`` is for short internal jobs (a connection's close handshake);
``spawn`` is the supervised task domains get through the handler context: a
failure is logged and counted, announced through ``on_failure`` (so a stream's
viewers are told), and with a ``restart`` policy the task starts again after
the policy's delay. Nothing dies silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from rtserver.backoff import BackoffPolicy
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["TASK_FAILURES", "TaskFailure", "TaskGroup"]

log = get_logger("rtserver.tasks")

TASK_FAILURES = REGISTRY.counter(
    "rtserver_task_failures_total", "Background tasks that ended with an error")

#: Called after a supervised task failed: (exception, failures so far).
TaskFailure = Callable[[BaseException, int], None]


class TaskGroup:
    """The tasks of one node."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervised: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks) + len(self._supervised)

    def run(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task kept referenced until it ends; a failure is logged."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            TASK_FAILURES.inc()
            log.error("task_failed", task=task.get_name(), error=repr(exc))

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, *,
              restart: BackoffPolicy | None = None,
              on_failure: TaskFailure | None = None) -> asyncio.Task[None]:
        """Run ``factory()`` supervised (see the module docstring)."""
        task = asyncio.get_running_loop().create_task(
            self._supervise(factory, name, restart, on_failure), name=name)
        self._supervised.add(task)
        task.add_done_callback(self._supervised.discard)
        return task

    async def _supervise(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str,
                         restart: BackoffPolicy | None, on_failure: TaskFailure | None) -> None:
        failures = 0
        while True:
            try:
                await factory()
                return
            except Exception as exc:  # noqa: BLE001 - logged, counted, announced, restarted
                failures += 1
                TASK_FAILURES.inc()
                delay = restart.delay(failures) if restart is not None else None
                log.error("task_failed", task=name, error=repr(exc), failures=failures,
                          restart_in=round(delay, 3) if delay is not None else None,
                          action="restarting" if delay is not None else
                          "Required action: report it; this task stopped")
                if on_failure is not None:
                    try:
                        on_failure(exc, failures)
                    except Exception as cb_exc:  # noqa: BLE001 - logged and counted
                        TASK_FAILURES.inc()
                        log.error("task_failure_callback_failed", task=name,
                                  error=repr(cb_exc))
                if delay is None:
                    return
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Cancel the supervised tasks still running; wait for every task (close
        handshakes finish on their own)."""
        for task in self._supervised:
            task.cancel()
        tasks = [*self._supervised, *self._tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
