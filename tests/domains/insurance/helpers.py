"""Helpers of the domain handler tests (frames, polling, task inspection)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conftest import Client
from rtserver.domains.insurance import InsuranceDomain
from rtserver.server import RtServer

__all__ = ["domain_ingress", "domain_tasks", "insurance", "nothing_but_pong", "recv_until",
           "wait_until"]


async def recv_until(client: Client, type_: str, timeout: float = 5.0,
                     skip: tuple[str, ...] = ("heartbeat", "room_event", "subscribed")
                     ) -> dict[str, Any]:
    """The next frame of ``type_``, skipping only the frame types in ``skip``."""
    while True:
        msg = await client.recv(timeout)
        if msg["type"] == type_:
            return msg
        if msg["type"] not in skip:
            raise AssertionError(f"expected {type_}, got {msg}")


async def nothing_but_pong(client: Client) -> None:
    """Assert the next frame (skipping heartbeats) is the pong of a ping sent now."""
    await client.send({"type": "ping", "id": "probe"})
    msg = await recv_until(client, "pong", skip=("heartbeat",))
    assert msg["id"] == "probe"


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it is true (fails after ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


def domain_tasks() -> list[str]:
    """Names of the running domain tasks except the always-on watchdog."""
    return sorted(t.get_name() for t in asyncio.all_tasks()
                  if t.get_name().startswith("rtserver-domain-")
                  and "watchdog" not in t.get_name() and not t.done())


def insurance(server: RtServer) -> InsuranceDomain:
    """The insurance domain plugin of ``server``'s node."""
    domain = server.node.domain("insurance")
    assert isinstance(domain, InsuranceDomain)
    return domain


async def domain_ingress(server: RtServer, message: Any) -> None:
    """Hand an ingress payload to the handler the domain registered for its kind."""
    handler = server.node.router.ingress_handler_for(message)
    assert handler is not None, f"no ingress handler for {type(message).__name__}"
    await handler(message)
