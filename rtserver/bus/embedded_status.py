"""The cluster side of a worker's embedded bus client: answering the hub's
collections and asking for them.

A ``COLLECT`` frame from the hub without a payload asks for this worker's
metrics text and health (the cluster ``/healthz`` and ``/metrics``); with a
payload it is an admin query ``[name, args]`` answered by the query provider
(:mod:`rtserver.admin_cluster`). :class:`ClusterStatusClient` is a base class
of :class:`~rtserver.bus.embedded_client.EmbeddedBus`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from rtserver.bus import wire
from rtserver.bus.base import BusHealth
from rtserver.bus.embedded_settings import EmbeddedBusSettings
from rtserver.bus.metrics_text import cluster_health_doc, cluster_metrics_text
from rtserver.metrics import REGISTRY

__all__ = ["ClusterStatusClient"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


class ClusterStatusClient:
    """Cluster metrics, health and admin queries over the hub (a base of EmbeddedBus)."""

    settings: EmbeddedBusSettings
    _loop: asyncio.AbstractEventLoop
    _health: BusHealth
    _out: list[bytes]
    _flush_scheduled: bool
    _metrics_provider: Callable[[], str] | None
    _health_provider: Callable[[], dict[str, Any]] | None
    _query_provider: Callable[[str, dict[str, Any]], Any] | None

    #: Provided by the bus class this is mixed into (EmbeddedBus).
    _flush: Callable[[], None]
    _request: Callable[..., Awaitable[tuple[int, bytes]]]

    # --- status providers

    def set_status_providers(self, metrics_provider: Callable[[], str] | None,
                             health_provider: Callable[[], dict[str, Any]] | None) -> None:
        """Replace the providers answering the hub's cluster metrics/health requests."""
        self._metrics_provider = metrics_provider
        self._health_provider = health_provider

    def set_query_provider(self, provider: Callable[[str, dict[str, Any]], Any]) -> None:
        """Answer the admin queries of :meth:`cluster_query` with ``provider(name, args)``
        (this worker's part: msgpack-encodable)."""
        self._query_provider = provider


    def _answer_collect(self, cid: int) -> None:
        worker = self.settings.worker_id
        if self._metrics_provider is not None:
            metrics = self._metrics_provider()
        else:
            metrics = REGISTRY.render({"worker": str(worker)})
        if self._health_provider is not None:
            health = self._health_provider()
        else:
            h = self._health
            health = {"ok": h.ok, "bus": {"kind": h.kind, "ok": h.ok, "reason": h.reason}}
        payload = _enc.encode({"metrics": metrics, "health": health, "pid": os.getpid(),
                               "time": time.time()})
        self._out.append(wire.encode(wire.K_COLLECT_REPLY, cid, 0, "", payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _answer_query(self, cid: int, query: bytes) -> None:
        name, args = _dec.decode(query)
        if self._query_provider is None:
            answer: Any = {"error": "no_query_provider",
                           "message": f"worker {self.settings.worker_id} answers no admin "
                           "queries (no query provider)"}
        else:
            answer = self._query_provider(str(name), dict(args))
        self._out.append(wire.encode(wire.K_COLLECT_REPLY, cid, 0, "", _enc.encode(answer)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)


    # --- cluster status

    async def cluster_query(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Every worker's answer to the admin query ``name``: ``{"workers": {id: answer},
        "missing": [ids that did not answer within the hub's collect_timeout],
        "expected_workers": n}``."""
        _, payload = await self._request(wire.K_STATUS, "", _enc.encode((name, args)))
        result: dict[str, Any] = _dec.decode(payload)
        return result

    async def cluster_status(self) -> dict[str, Any]:
        """Every worker's metrics text and health as collected by the hub."""
        _, payload = await self._request(wire.K_STATUS, "")
        result: dict[str, Any] = _dec.decode(payload)
        return result

    async def cluster_metrics(self) -> str:
        """Prometheus text for the whole server (every worker, labelled, plus the supervisor)."""
        return cluster_metrics_text(await self.cluster_status())

    async def cluster_health(self) -> dict[str, Any]:
        """Health of the whole server: ``status`` ok/degraded, per-worker health, reasons."""
        return cluster_health_doc(await self.cluster_status())
