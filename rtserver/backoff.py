"""The one backoff policy of rtserver: reconnects and retries of every backend.

Used by the embedded bus client, the Redis bus, the Redis ingress and the
PostgreSQL store/ingress. Attempt ``n`` (from 1) waits
``min(max_delay, initial_delay * 2**(n-1))`` seconds, scaled by a random
factor in ``[1 - jitter, 1 + jitter]``. Every caller logs every attempt; the
policy only computes delays. The random source is injectable for tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["BackoffPolicy"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with symmetric jitter.

    ``initial_delay`` and ``max_delay`` come from documented configuration
    keys (``[bus] reconnect_backoff_*``, ``[database] retry_backoff_*``, ...);
    ``jitter`` is in ``[0, 1)``; ``uniform`` is ``random.uniform`` unless a
    test passes a seeded one.
    """

    initial_delay: float
    max_delay: float
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError(
                f"backoff delays invalid (initial {self.initial_delay}, max {self.max_delay}). "
                "Required action: set 0 < initial delay <= max delay in the configuration")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(
                f"backoff jitter {self.jitter} out of range. Required action: use 0 <= jitter < 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * (2 ** min(max(attempt, 1) - 1, 30)))
        if self.jitter == 0.0:
            return float(base)
        return float(base * (1.0 + self.jitter * self.uniform(-1.0, 1.0)))
