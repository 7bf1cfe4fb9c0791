"""GET /client/<file> (the JavaScript SDK) and /examples/<file> (--dev only)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
from pathlib import Path

import orjson

from conftest import ServerFactory, make_config
from rtserver.metrics import REGISTRY
from rtserver.server import RtServer
from rtserver.static_files import STATIC_ROOT, StaticFiles

SDK_SRC = Path(__file__).resolve().parents[2] / "clients" / "js" / "src"


def get(port: int, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """A raw GET (http.client sends the path as given: no normalisation of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def test_sdk_is_served_with_content_type_etag_and_304(server: RtServer) -> None:
    port = server.port or 0
    status, headers, body = await asyncio.to_thread(get, port, "/client/rtserver-client.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == (SDK_SRC / "rtserver-client.js").read_bytes()
    assert headers["cache-control"] == "no-cache"
    etag = headers["etag"]
    assert etag == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    before = REGISTRY.counter("rtserver_static_requests_total", "", ("prefix", "status")).get(
        "client", "304")
    status, headers, body = await asyncio.to_thread(
        get, port, "/client/rtserver-client.js", {"If-None-Match": f'W/"x", {etag}'})
    assert (status, body, headers["etag"]) == (304, b"", etag)
    after = REGISTRY.counter("rtserver_static_requests_total", "", ("prefix", "status")).get(
        "client", "304")
    assert after == before + 1
    status, headers, _ = await asyncio.to_thread(
        get, port, "/client/rtserver-client.js", {"If-None-Match": '"stale"'})
    assert status == 200
    status, headers, body = await asyncio.to_thread(get, port, "/client/rtserver-client.d.ts")
    assert status == 200 and headers["content-type"].startswith("application/typescript")
    for module in ("client.js", "backoff.js", "domain.js"):
        status, _, body = await asyncio.to_thread(get, port, f"/client/{module}")
        assert status == 200 and body == (SDK_SRC / module).read_bytes()


async def test_no_traversal_no_listing_no_unknown_suffix(server: RtServer) -> None:
    port = server.port or 0
    for path in ("/client/../server.py", "/client/..%2Fserver.py", "/client/%2e%2e/config.py",
                 "/client/", "/client/.hidden.js", "/client/sub/dir.js", "/client/client.py",
                 "/client/missing.js", "/client/..", "/client//etc/passwd"):
        status, _, body = await asyncio.to_thread(get, port, path)
        assert status == 404, path
        doc = orjson.loads(body)
        assert doc["error"] == "not_found" and doc["action"].startswith("Required action:"), path


async def test_examples_only_in_dev_mode(make_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "index.html").write_text("<!doctype html><title>x</title>")
    plain = await make_server()
    status, _, body = await asyncio.to_thread(get, plain.port or 0, "/examples/index.html")
    assert status == 404 and b"--dev" in body
    dev = await make_server(make_config(server={"dev": True}))
    dev.static_files = StaticFiles(dev=True, root=tmp_path)
    status, headers, body = await asyncio.to_thread(get, dev.port or 0, "/examples/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert body.startswith(b"<!doctype html>")


async def test_a_broken_installation_answers_500_with_the_action(server: RtServer,
                                                                tmp_path: Path) -> None:
    server.static_files = StaticFiles(dev=False, root=tmp_path / "nothing")
    status, _, body = await asyncio.to_thread(get, server.port or 0, "/client/rtserver-client.js")
    assert status == 500
    assert orjson.loads(body)["action"].startswith("Required action: reinstall rtserver")


def test_the_package_directory_holds_the_sdk() -> None:
    shipped = sorted(p.name for p in (STATIC_ROOT / "client").iterdir())
    assert shipped == sorted(p.name for p in SDK_SRC.iterdir())
    assert "rtserver-client.js" in shipped and "rtserver-client.d.ts" in shipped
