"""TLS directly on the WebSocket port: wss:// clients, the fan-out core's transport path under
TLS, --workers 2, and clean start-up failures for bad certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from certs import TlsFiles, make_tls_files
from websockets.asyncio.client import ClientConnection, connect

from conftest import Client, ServerFactory, ServerProcess, make_config, token
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_server(make_server: ServerFactory, tls_files: TlsFiles) -> RtServer:
    return await make_server(make_config(server={"certfile": tls_files.certfile,
                                                 "keyfile": tls_files.keyfile}))


@pytest.fixture
async def wss_client(tls_files: TlsFiles) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    opened: list[ClientConnection] = []

    async def factory(port: int, tok: str) -> Client:
        ws = await connect(f"wss://127.0.0.1:{port}/ws?token={tok}",
                           ssl=tls_files.client_context(), max_size=None, compression=None)
        opened.append(ws)
        client = Client(ws)
        assert (await client.recv())["type"] == "connection"
        auth = await client.recv()
        assert auth["type"] == "authenticated", auth
        return client

    yield factory
    await asyncio.gather(*(ws.close() for ws in opened))


async def test_wss_subscribe_publish_receive(tls_server: RtServer, wss_client: Connect) -> None:
    assert tls_server.port is not None
    member = await wss_client(tls_server.port, token(rooms=["bench:*"]))
    await member.request({"type": "subscribe", "room": "bench:tls"}, "subscribed")
    publisher = await wss_client(tls_server.port, token(perms=["publish"], rooms=["bench:*"]))
    ack = await publisher.request({"type": "publish", "room": "bench:tls", "data": {"n": 1}},
                                  "ack")
    got = await member.recv_type("message")
    assert got["data"] == {"n": 1} and got["seq"] == ack["seq"] == 1
    # Every sink on this TLS server takes the transport path: no raw send() to a TLS socket.
    sinks = [c.sink for c in tls_server.node.hub.connections.values()]
    assert len(sinks) == 2 and all(s.fd == -1 for s in sinks)
    stats = tls_server.node.fanout.stats()
    assert stats["direct_sends"] == 0 and stats["transport_writes"] >= stats["writes"] > 0


async def test_plain_server_still_sends_directly(server: RtServer,
                                                 connect_client: Connect) -> None:
    """The counterpart of the check above: without TLS the core writes to the socket."""
    client = await connect_client(token())
    await client.request({"type": "ping", "id": 1}, "pong")
    assert all(c.sink.fd >= 0 for c in server.node.hub.connections.values())
    assert server.node.fanout.stats()["direct_sends"] > 0


async def test_wss_broadcast_to_100_members_byte_exact(tls_server: RtServer,
                                                       wss_client: Connect) -> None:
    assert tls_server.port is not None
    members = await asyncio.gather(*(wss_client(tls_server.port, token(rooms=["bench:*"]))
                                     for _ in range(100)))
    for m in members:
        await m.request({"type": "subscribe", "room": "bench:wide"}, "subscribed")
    publisher = await wss_client(tls_server.port, token(perms=["publish"], rooms=["bench:*"]))
    # Raw JSON with spacing, escapes and non-ASCII text: passed through untouched.
    data = '{"text": "caf\\u00e9 \u00e9t\u00e9 \u2713", "n": [1, 2.50, -0], "pad": "' + (
        "x" * 3000) + '"}'
    await publisher.ws.send('{"type":"publish","room":"bench:wide","id":7,"data":' + data + "}")
    assert (await publisher.recv_type("ack"))["id"] == 7

    async def raw_message(m: Client) -> str:
        async with asyncio.timeout(10):
            while True:
                text = await m.ws.recv()
                assert isinstance(text, str)
                if orjson.loads(text)["type"] == "message":
                    return text

    texts = await asyncio.gather(*(raw_message(m) for m in members))
    assert len(set(texts)) == 1, "every member got the same bytes"
    assert ('"data":' + data) in texts[0]
    assert tls_server.node.fanout.stats()["direct_sends"] == 0


def test_two_workers_with_tls(tls_files: TlsFiles) -> None:
    proc = ServerProcess(["--workers", "2", "--certfile", tls_files.certfile,
                          "--keyfile", tls_files.keyfile, "--domains", ""],
                         listening_lines=2)
    try:
        port = proc.wait_listening()
        assert len(proc.events("fanout_tls")) == 2
        assert all(e["tls"] for e in proc.events("listening"))
        asyncio.run(_across_workers(port, tls_files))
    finally:
        proc.stop()


async def _across_workers(port: int, tls_files: TlsFiles) -> None:
    """Connect until both workers answered, then publish from one and receive on the other."""
    context = tls_files.client_context()
    by_worker: dict[int, ClientConnection] = {}
    spare: list[ClientConnection] = []
    try:
        for _ in range(40):
            ws = await connect(f"wss://127.0.0.1:{port}/ws?token="
                               f"{token(perms=['publish'], rooms=['bench:*'])}", ssl=context)
            welcome = orjson.loads(await ws.recv())
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
            if welcome["worker"] in by_worker:
                spare.append(ws)
            else:
                by_worker[welcome["worker"]] = ws
            if len(by_worker) == 2:
                break
        assert sorted(by_worker) == [0, 1], "the kernel spread connections over both workers"
        a, b = by_worker[0], by_worker[1]
        await b.send(orjson.dumps({"type": "subscribe", "room": "bench:x", "id": 1}).decode())
        await _until(b, "subscribed")
        await a.send(orjson.dumps({"type": "publish", "room": "bench:x", "data": [1, "é"],
                                   "id": 2}).decode())
        await _until(a, "ack")
        assert (await _until(b, "message"))["data"] == [1, "é"]
    finally:
        await asyncio.gather(*(ws.close() for ws in [*by_worker.values(), *spare]))


async def _until(ws: ClientConnection, type_: str) -> dict[str, object]:
    async with asyncio.timeout(10):
        while True:
            msg: dict[str, object] = orjson.loads(await ws.recv())
            if msg["type"] == type_:
                return msg


def test_plain_client_cannot_talk_to_tls_port(tls_files: TlsFiles) -> None:
    """A wss:// server does not answer ws:// (no silent plain-text fallback)."""
    proc = ServerProcess(["--certfile", tls_files.certfile, "--keyfile", tls_files.keyfile,
                          "--domains", ""])
    try:
        port = proc.wait_listening()

        async def plain() -> None:
            with pytest.raises(Exception):  # noqa: B017 - any handshake failure will do
                async with asyncio.timeout(10):
                    await connect(f"ws://127.0.0.1:{port}/ws?token={token()}")

        asyncio.run(plain())

        async def untrusted() -> None:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(f"wss://127.0.0.1:{port}/ws", ssl=ssl.create_default_context())

        asyncio.run(untrusted())
    finally:
        proc.stop()


@pytest.mark.parametrize("case", ["missing", "garbage", "mismatch", "only_cert"])
def test_bad_certificate_is_a_clean_startup_failure(case: str, tls_files: TlsFiles,
                                                    tmp_path: Path) -> None:
    certfile, keyfile = tls_files.certfile, tls_files.keyfile
    if case == "missing":
        certfile = str(tmp_path / "nope.pem")
    elif case == "garbage":
        Path(tmp_path / "bad.pem").write_text("not a certificate\n")
        certfile = str(tmp_path / "bad.pem")
    elif case == "mismatch":
        other = make_tls_files(tmp_path)
        keyfile = other.keyfile
    args = ["--certfile", certfile] + ([] if case == "only_cert" else ["--keyfile", keyfile])
    proc = ServerProcess([*args, "--domains", ""], env={"RTSERVER_WORKERS": "2"})
    status = proc.read_rest()
    assert status == 2, proc.lines[-3:]
    failure = proc.events("startup_failed")
    assert len(failure) == 1 and failure[0]["action"].startswith("Required action: ")
    assert "certfile" in failure[0]["action"] or "keyfile" in failure[0]["problem"]
    assert not proc.events("listening")



async def test_silent_tls_handshake_is_dropped_after_open_timeout(
        make_server: ServerFactory, tls_files: TlsFiles) -> None:
    server = await make_server(make_config(server={
        "certfile": tls_files.certfile, "keyfile": tls_files.keyfile, "open_timeout": 0.5}))
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            assert await reader.read() == b"", "the server closed the silent connection"
        assert loop.time() - started >= 0.4
    finally:
        writer.close()
