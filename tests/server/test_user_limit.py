"""limits.max_connections_per_user against a real server: error frame, close 4029, counted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Client, ServerFactory, make_config, token, ws_url
from rtserver.core_metrics import ERRORS
from rtserver.protocol.close_codes import RECONNECT, CloseCode
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


async def _refused(client: Client) -> dict[str, object]:
    """The error frame, then the close with 4029 (nothing in between)."""
    error = await client.recv_type("error")
    try:
        async with asyncio.timeout(5):
            extra = await client.ws.recv()
        raise AssertionError(f"a frame after the refusal: {extra!r}")
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == CloseCode.USER_LIMIT == 4029
    return error


async def _until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def test_per_user_limit(make_server: ServerFactory) -> None:
    server: RtServer = await make_server(make_config(limits={"max_connections_per_user": 2}))
    user = str(uuid.uuid4())
    tok = token(user, rooms=["bench:*"])
    opened = []
    try:
        for _ in range(2):
            ws = await connect(ws_url(server, tok))
            opened.append(ws)
            client = Client(ws)
            assert (await client.recv())["type"] == "connection"
            assert (await client.recv())["type"] == "authenticated"
        before = ERRORS.get("too_many_user_connections")
        # The third, with the token in the URL: refused after the upgrade.
        third = Client(await connect(ws_url(server, tok)))
        assert (await third.recv())["type"] == "connection"
        error = await _refused(third)
        assert error["code"] == "too_many_user_connections"
        assert str(error["action"]).startswith("Required action: close connections")
        assert "max_connections_per_user" in str(error["message"])
        assert ERRORS.get("too_many_user_connections") == before + 1
        assert ERRORS.get("close_4029") >= 1
        assert len(server.node.hub.by_user[user]) == 2
        # The same with an auth frame (the id is echoed).
        fourth = Client(await connect(ws_url(server)))
        assert (await fourth.recv())["type"] == "connection"
        await fourth.send({"type": "auth", "token": tok, "id": "a1"})
        assert (await _refused(fourth))["id"] == "a1"
        # Another user is not affected.
        other = Client(await connect(ws_url(server, token(rooms=["bench:*"]))))
        opened.append(other.ws)
        assert (await other.recv())["type"] == "connection"
        assert (await other.recv())["type"] == "authenticated"
        # A slot given back is usable again.
        await opened.pop(0).close()
        await _until(lambda: len(server.node.hub.by_user[user]) == 1, "first connection gone")
        again = Client(await connect(ws_url(server, tok)))
        opened.append(again.ws)
        assert (await again.recv())["type"] == "connection"
        assert (await again.recv())["type"] == "authenticated"
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))


async def test_anonymous_upgrade_counts_too(make_server: ServerFactory) -> None:
    server = await make_server(make_config(limits={"max_connections_per_user": 1},
                                           auth={"allow_anonymous": True}))
    user = str(uuid.uuid4())
    first = Client(await connect(ws_url(server, token(user))))
    try:
        assert (await first.recv())["type"] == "connection"
        assert (await first.recv())["type"] == "authenticated"
        anon = Client(await connect(ws_url(server)))
        assert (await anon.recv())["type"] == "connection"
        assert (await anon.recv())["anonymous"] is True
        await anon.send({"type": "auth", "token": token(user), "id": 5})
        assert (await _refused(anon))["code"] == "too_many_user_connections"
    finally:
        await first.ws.close()


def test_close_code_is_never_reconnect() -> None:
    assert RECONNECT[CloseCode.USER_LIMIT] == "never"
