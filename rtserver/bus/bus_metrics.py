"""Metrics shared by the bus clients (embedded and Redis), labelled by ``bus``."""

from __future__ import annotations

from rtserver.metrics import REGISTRY

__all__ = ["RECONNECTS", "REQUEST_FAILURES"]

REQUEST_FAILURES = REGISTRY.counter(
    "rtserver_bus_request_failures_total", "Bus requests that failed", ("bus", "reason"))
RECONNECTS = REGISTRY.counter(
    "rtserver_bus_reconnect_attempts_total", "Bus reconnect attempts", ("bus", "result"))
