"""rtserver load-test harness (``python -m rtserver.bench SCENARIO ...`` / ``rtserver bench ...``).

The harness starts (or targets) an rtserver and small reference peers, drives
them from lean generator processes and reports latency, fan-out completion,
throughput, message integrity and server cost. See ``docs/bench.md``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
