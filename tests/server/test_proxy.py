"""rtserver behind the shipped nginx configuration (deploy/nginx-rtserver.conf).

A private, non-daemon nginx on a free loopback port terminates TLS (a test CA)
and proxies the WebSocket upgrade to a real rtserver. Clients connect from
other loopback addresses (127.0.0.2, 127.0.0.3, ...) than the one nginx
connects from (127.0.0.1, the trusted proxy), so the forwarded address is
distinguishable from the proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from certs import TlsFiles, make_tls_files
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory, make_config, token
from rtserver.server import RtServer
from tests.store.pgutil import TempDatabase

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nginx-rtserver.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed. Required action: apt-get install nginx "
    "(.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site_config(upstream_port: int, listen_port: int, tls: TlsFiles) -> str:
    """The shipped file with the test's ports and certificate (each edit must apply)."""
    text = DEPLOY.read_text()
    for old, new in (("server 127.0.0.1:8765;", f"server 127.0.0.1:{upstream_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;"),
                     ("/etc/ssl/rtserver/fullchain.pem", tls.certfile),
                     ("/etc/ssl/rtserver/privkey.pem", tls.keyfile)):
        assert text.count(old) == 1, f"{DEPLOY} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


class Nginx:
    """A private nginx: config, logs, pid and temp files in one directory."""

    def __init__(self, directory: Path, site: str) -> None:
        self.dir = directory
        (directory / "rtserver.conf").write_text(site)
        temp = "\n".join(f"    {kind}_temp_path {directory / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (directory / "nginx.conf").write_text(f"""
worker_processes 1;
error_log {directory / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / 'access.log'};
{temp}
    include {directory / 'rtserver.conf'};
}}
""")
        assert NGINX is not None
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"),
             "-e", str(directory / "error.log"),
             "-g", f"daemon off; pid {directory / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def errors(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


async def _wait_accepting(port: int, nginx: Nginx) -> None:
    """Until nginx accepts TCP connections on ``port`` (or exits: the test fails)."""
    async with asyncio.timeout(10):
        while True:
            if nginx.proc.poll() is not None:
                raise AssertionError(f"nginx exited {nginx.proc.returncode}: {nginx.errors()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("proxy-tls"))


@pytest.fixture
async def proxied(make_server: ServerFactory, tls_files: TlsFiles,
                  tmp_path: Path) -> AsyncIterator[tuple[RtServer, int]]:
    server = await make_server(make_config(server={
        "trusted_proxies": ["127.0.0.1"], "max_connections_per_address": 2}))
    async with _nginx_for(server, tls_files, tmp_path) as port:
        yield server, port


@contextlib.asynccontextmanager
async def _nginx_for(server: RtServer, tls_files: TlsFiles,
                     directory: Path) -> AsyncIterator[int]:
    """A private nginx in front of ``server``; yields its TLS port."""
    assert server.port is not None
    listen = _free_port()
    nginx = Nginx(directory, _site_config(server.port, listen, tls_files))
    try:
        await _wait_accepting(listen, nginx)
        yield listen
    finally:
        nginx.stop()


async def _via_proxy(port: int, tls: TlsFiles, source: str, tok: str,
                     headers: dict[str, str] | None = None) -> ClientConnection:
    ws = await connect(f"wss://127.0.0.1:{port}/ws?token={tok}", ssl=tls.client_context(),
                       local_addr=(source, 0), additional_headers=headers)
    assert orjson.loads(await ws.recv())["type"] == "connection"
    assert orjson.loads(await ws.recv())["type"] == "authenticated"
    return ws


async def _until(ws: ClientConnection, type_: str) -> dict[str, object]:
    async with asyncio.timeout(10):
        while True:
            msg: dict[str, object] = orjson.loads(await ws.recv())
            if msg["type"] == type_:
                return msg


async def test_websocket_through_nginx(proxied: tuple[RtServer, int],
                                       tls_files: TlsFiles) -> None:
    server, port = proxied
    member = await _via_proxy(port, tls_files, "127.0.0.2", token(rooms=["bench:*"]))
    publisher = await _via_proxy(port, tls_files, "127.0.0.3",
                                 token(perms=["publish"], rooms=["bench:*"]))
    try:
        await member.send('{"type":"subscribe","room":"bench:p","id":1}')
        await _until(member, "subscribed")
        await publisher.send('{"type":"publish","room":"bench:p","id":2,"data":{"x":"é"}}')
        await _until(publisher, "ack")
        assert (await _until(member, "message"))["data"] == {"x": "é"}
        remotes = sorted(c.remote for c in server.node.hub.connections.values())
        assert remotes == ["127.0.0.2:0", "127.0.0.3:0"], "the forwarded client addresses"
    finally:
        await asyncio.gather(member.close(), publisher.close())


async def test_per_address_limit_counts_the_forwarded_client(
        proxied: tuple[RtServer, int], tls_files: TlsFiles) -> None:
    server, port = proxied
    held = [await _via_proxy(port, tls_files, "127.0.0.2", token()) for _ in range(2)]
    try:
        assert server.admission.per_address("127.0.0.2") == 2
        assert server.admission.per_address("127.0.0.1") == 0, "not the proxy's address"
        with pytest.raises(InvalidStatus) as refused:
            await _via_proxy(port, tls_files, "127.0.0.2", token())
        assert refused.value.response.status_code == 429
        assert orjson.loads(refused.value.response.body)["error"] == "per_address"
        # Another client behind the same proxy still gets in, and a forged header in
        # front of nginx's own entry is ignored (counted by the real client address).
        other = await _via_proxy(port, tls_files, "127.0.0.3", token(),
                                 {"X-Forwarded-For": "127.0.0.2"})
        held.append(other)
        assert server.admission.per_address("127.0.0.3") == 1
        assert server.admission.per_address("127.0.0.2") == 2
    finally:
        await asyncio.gather(*(ws.close() for ws in held))


async def test_direct_client_forging_the_header_counts_by_its_peer(
        proxied: tuple[RtServer, int]) -> None:
    server, _ = proxied
    from rtserver.forwarded import CLIENT_ADDRESS

    before = CLIENT_ADDRESS.get("untrusted_peer")
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws?token={token()}",
                       local_addr=("127.0.0.4", 0),
                       additional_headers={"X-Forwarded-For": "203.0.113.9"})
    try:
        assert orjson.loads(await ws.recv())["type"] == "connection"
        assert server.admission.per_address("127.0.0.4") == 1
        assert server.admission.per_address("203.0.113.9") == 0
        assert CLIENT_ADDRESS.get("untrusted_peer") == before + 1
        (conn,) = server.node.hub.connections.values()
        assert conn.remote.startswith("127.0.0.4:") and not conn.remote.endswith(":0")
    finally:
        await ws.close()


@pytest.fixture(scope="module")
def db_dsn() -> Iterator[str]:
    with TempDatabase(migrated=True) as dsn:
        yield dsn


async def test_recorded_address_is_the_forwarded_client(
        make_server: ServerFactory, tls_files: TlsFiles, tmp_path: Path, db_dsn: str) -> None:
    server = await make_server(make_config(
        server={"trusted_proxies": ["127.0.0.1"]},
        database={"dsn": db_dsn, "record_flush_interval": 0.05}))
    async with _nginx_for(server, tls_files, tmp_path) as port:
        ws = await _via_proxy(port, tls_files, "127.0.0.5", token())
        (conn_id,) = server.node.hub.connections
        await ws.close()
    pg = await asyncpg.connect(db_dsn)
    try:
        async with asyncio.timeout(10):
            while True:
                row = await pg.fetchrow(
                    "SELECT host(ip_address) AS ip, disconnected_at FROM websocket_connections "
                    "WHERE connection_id = $1", conn_id)
                if row is not None and row["disconnected_at"] is not None:
                    break
                await asyncio.sleep(0.05)
        assert row["ip"] == "127.0.0.5"
    finally:
        await pg.close()
