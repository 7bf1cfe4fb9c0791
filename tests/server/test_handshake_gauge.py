"""rtserver_handshakes_in_progress: admitted connections that have not authenticated yet."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable

from conftest import Client, token
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


def gauges(port: int) -> tuple[float, float]:
    """(in progress, most at once) from this worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("rtserver_handshakes_in_progress"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return (values["rtserver_handshakes_in_progress"],
            values["rtserver_handshakes_in_progress_max"])


async def test_handshakes_in_progress(server: RtServer, connect_client: Connect) -> None:
    port = server.port or 0
    assert await asyncio.to_thread(gauges, port) == (0.0, 0.0)
    # Two clients without a token: admitted, upgraded, waiting for their auth frame.
    waiting = [await connect_client() for _ in range(2)]
    assert await asyncio.to_thread(gauges, port) == (2.0, 2.0)
    await waiting[0].request({"type": "auth", "token": token()}, "authenticated")
    assert await asyncio.to_thread(gauges, port) == (1.0, 2.0)
    # One that ends before authenticating is no longer in progress either.
    await waiting[1].ws.close()
    for _ in range(200):
        if server.admission.handshakes == 0:
            break
        await asyncio.sleep(0.01)
    assert await asyncio.to_thread(gauges, port) == (0.0, 2.0)
    # A token in the URL: authenticated at once, the most at once stays 2.
    await connect_client(token())
    assert await asyncio.to_thread(gauges, port) == (0.0, 2.0)
