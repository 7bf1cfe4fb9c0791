"""Admin reads of the Redis bus: rooms' history depth, and admin queries answered by
every worker of every node (a base class of :class:`~rtserver.bus.redis_bus.RedisBus`).

Keys and channels (``P`` = ``key_prefix``)::

    P:workers   zset     node id -> wall-clock expiry (``presence_ttl`` ahead), written at
                         every (re)connect and presence refresh, removed at close: the
                         workers an admin query expects an answer from
    P:wnode:<n> string   the node (``rtserver serve``) worker n belongs to, with the same
                         lifetime (``presence_ttl``, renewed with the zset entry): an answer
                         names the node of a worker that did not answer
    P:admin     channel  admin queries, ``b"Q" + msgpack [id, reply node, name, args]``
    P:node:<n>  channel  the requester's own channel: answers,
                         ``b"A" + msgpack [id, node, answer]``

:meth:`RedisAdminQueries.cluster_query` reads the live members of ``P:workers``,
publishes the query and waits until each of them answered or ``timeout``
passed (``workers.collect_timeout``): the ones that did not answer are named
in ``missing``, and ``nodes`` gives the node of every expected worker. A worker
answers from its query provider (:func:`rtserver.admin_cluster.local_answer`); a
failed answer is logged and counted (``rtserver_bus_admin_answer_failures_total``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtserver.bus.base import BusUnavailable, HistoryReport
from rtserver.bus.redis_publish import CONN_ERRORS, err_text
from rtserver.bus.redis_settings import RedisBusSettings
from rtserver.bus.redis_streams import history_info
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["RedisAdminQueries"]

_log = get_logger("rtserver.bus.redis_admin")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_ANSWER_FAILURES = REGISTRY.counter(
    "rtserver_bus_admin_answer_failures_total",
    "Admin query answers this worker could not publish to Redis, by cause", ("cause",))


class _Wait:
    __slots__ = ("answers", "done", "expected")

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.answers: dict[str, Any] = {}
        self.done = asyncio.Event()


class RedisAdminQueries:
    """History depth and cluster-wide admin queries over Redis."""

    settings: RedisBusSettings
    _client: aioredis.Redis | None
    _up: bool
    _loop: asyncio.AbstractEventLoop
    _admin_provider: Callable[[str, dict[str, Any]], Any] | None
    _admin_waits: dict[str, _Wait]

    #: Provided by the bus class this is mixed into (RedisBus).
    _unavailable: Callable[[str], BusUnavailable]
    _command: Callable[[str, Any], Awaitable[Any]]

    def _admin_init(self) -> None:
        self._admin_provider = None
        self._admin_waits = {}

    @property
    def _ch_admin(self) -> str:
        return f"{self.settings.key_prefix}:admin"

    def set_query_provider(self, provider: Callable[[str, dict[str, Any]], Any]) -> None:
        """Answer admin queries with ``provider(name, args)`` (this worker's part)."""
        self._admin_provider = provider

    async def history_info(self, rooms: list[str]) -> HistoryReport:
        """The history depth of ``rooms`` as stored in Redis, and the bounds (one pipeline)."""
        if not self._up or self._client is None:
            raise self._unavailable("history_info")
        s = self.settings
        return HistoryReport(history_size=s.history_size, history_max_bytes=s.history_max_bytes,
                             history_ttl=s.history_ttl, rooms=await self._command(
                                 "history_info", history_info(self._client, s.key_prefix, rooms)))

    # --- the registry of workers

    async def _admin_register(self, client: aioredis.Redis) -> None:
        """This worker is alive for another ``presence_ttl`` (expired members dropped)."""
        now = time.time()
        key = f"{self.settings.key_prefix}:workers"
        pipe = client.pipeline(transaction=False)
        pipe.zadd(key, {self.settings.node_id: now + self.settings.presence_ttl})
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.set(self._node_key(self.settings.node_id), self.settings.node_name,
                 px=int(self.settings.presence_ttl * 1000))
        await pipe.execute()

    async def _admin_unregister(self, client: aioredis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.zrem(f"{self.settings.key_prefix}:workers", self.settings.node_id)
        pipe.delete(self._node_key(self.settings.node_id))
        await pipe.execute()

    def _node_key(self, node_id: str) -> str:
        return f"{self.settings.key_prefix}:wnode:{node_id}"

    # --- asking

    async def cluster_query(self, name: str, args: dict[str, Any],
                            timeout: float) -> dict[str, Any]:
        """Every registered worker's answer to ``name``: ``{"workers": {node id: answer},
        "missing": [node ids without an answer within timeout], "expected_workers": n,
        "nodes": {node id: node name, or None when its entry expired}}`` (``nodes``: every
        expected worker). Raises :class:`BusUnavailable` when Redis cannot be asked."""
        client = self._client
        if not self._up or client is None:
            raise self._unavailable("admin query")
        members = await self._command("admin query", client.zrangebyscore(
            f"{self.settings.key_prefix}:workers", time.time(), "+inf"))
        wait = _Wait({m.decode() if isinstance(m, bytes) else str(m) for m in members})
        expected = sorted(wait.expected)
        names = await self._command("admin query", client.mget(
            [self._node_key(n) for n in expected])) if expected else []
        qid = uuid.uuid4().hex
        self._admin_waits[qid] = wait
        try:
            await self._command("admin query", client.publish(self._ch_admin, b"Q" + _enc.encode(
                (qid, self.settings.node_id, name, args))))
            # Ends with every expected answer or at the timeout: the workers that did not
            # answer are named in "missing".
            waiter = asyncio.ensure_future(wait.done.wait())
            await asyncio.wait([waiter], timeout=timeout)
            waiter.cancel()
        finally:
            self._admin_waits.pop(qid, None)
        missing = sorted(wait.expected - wait.answers.keys())
        if missing:
            _log.warning("admin_query_timeout", query=name, missing=missing, timeout=timeout)
        return {"workers": dict(wait.answers), "missing": missing,
                "expected_workers": len(wait.expected | wait.answers.keys()),
                "nodes": {n: None if v is None else (v.decode() if isinstance(v, bytes)
                                                     else str(v))
                          for n, v in zip(expected, names, strict=True)}}

    # --- answering (called from RedisBus.on_message)

    def on_admin_message(self, kind: int, data: bytes) -> None:
        """A query (``Q``, on ``P:admin``) or an answer (``A``, on this worker's channel)."""
        if kind == 0x41:
            qid, node, given = _dec.decode(data[1:])
            wait = self._admin_waits.get(qid)
            if wait is None:
                _log.info("admin_answer_late", node=node, query_id=qid)
                return
            wait.answers[str(node)] = given
            if wait.expected <= wait.answers.keys():
                wait.done.set()
            return
        qid, reply, name, args = _dec.decode(data[1:])
        provider = self._admin_provider
        answer: Any = ({"error": "no_query_provider",
                        "message": f"worker {self.settings.node_id} answers no admin queries"}
                       if provider is None else provider(str(name), dict(args)))
        payload = b"A" + _enc.encode((qid, self.settings.node_id, answer))
        self._loop.create_task(self._admin_reply(f"{self.settings.key_prefix}:node:{reply}",
                                                 payload))

    async def _admin_reply(self, channel: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            _ANSWER_FAILURES.inc("disconnected")
            _log.error("admin_answer_failed", error="no Redis connection",
                       action="the asking worker names this one in missing")
            return
        try:
            await client.publish(channel, payload)
        except (*CONN_ERRORS, RedisError) as exc:
            _ANSWER_FAILURES.inc("redis")
            _log.error("admin_answer_failed", error=err_text(exc),
                       action="the asking worker names this one in missing")
