"""No secret in any log line at any level: a real server at --log-level debug with a
password in the Redis URL (a private, password-protected redis-server) and tokens in
the URL, in an Authorization header and in an auth frame."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import SECRET, ServerProcess
from rtserver.auth import mint_token
from rtserver.config import load_config, masked
from rtserver.redact import mask_url_credentials, redact_text

REDIS_PASSWORD = "Rd1s-PassW0rd-" + uuid.uuid4().hex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[int]:
    """A redis-server on an ephemeral loopback port that requires REDIS_PASSWORD."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed. Required action: apt-get install "
                    "redis-server (the CI script does)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="rtserver-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the private redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _all_output(proc: ServerProcess) -> str:
    """Every byte the server wrote on stderr (JSON lines and anything else)."""
    _, err = proc.proc.communicate(timeout=30)
    seen = "\n".join(orjson.dumps(r).decode() for r in proc.lines)
    return seen + "\n" + getattr(proc, "_pending", b"").decode(errors="replace") + (err or "")


async def test_debug_run_leaks_no_credential(private_redis: int) -> None:
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{private_redis}/0"
    proc = ServerProcess(["--log-level", "debug", "--redis", redis_url],
                         env={"RTSERVER_JWT_SECRET": SECRET})
    tokens = [mint_token(SECRET, str(uuid.uuid4()), ["publish"], ["bench:*"], 600)
              for _ in range(4)]
    try:
        port = await asyncio.to_thread(proc.wait_listening, 30.0)
        # 1: token in the URL.
        async with connect(f"ws://127.0.0.1:{port}/ws?token={tokens[0]}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "connection"
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
            await ws.send('{"type":"subscribe","room":"bench:r","id":1}')
            assert orjson.loads(await ws.recv())["type"] == "subscribed"
        # 2: token in an Authorization header (and in the URL of a second parameter).
        async with connect(f"ws://127.0.0.1:{port}/ws?x=1&token={tokens[1]}",
                           additional_headers={"Authorization": f"Bearer {tokens[2]}"}) as ws:
            assert orjson.loads(await ws.recv())["type"] == "connection"
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
        # 3: token in an auth frame.
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert orjson.loads(await ws.recv())["type"] == "connection"
            await ws.send(orjson.dumps({"type": "auth", "token": tokens[3]}).decode())
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
        # 4: plain HTTP with a token in the query and a bearer header.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/healthz?token={tokens[0]}",
                                     headers={"Authorization": f"Bearer {tokens[1]}"})
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).read())
        assert orjson.loads(body)["status"] in ("ok", "degraded")
        proc.proc.send_signal(signal.SIGTERM)
        output = await asyncio.to_thread(_all_output, proc)
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, output[-2000:]
    assert REDIS_PASSWORD not in output
    for tok in tokens:
        assert tok not in output
        assert tok.split(".")[2] not in output  # not even the signature segment
    assert SECRET not in output
    records = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    config_lines = [r for r in records if r.get("event") == "config"]
    assert config_lines and ":***@127.0.0.1" in config_lines[0]["effective"]["bus"]["redis_url"]
    # The run was really at debug: websockets dumped the request lines (redacted) ...
    library = [r for r in records if r.get("event") == "library_log"]
    assert any("GET /ws?token=***" in r.get("message", "") for r in library)
    assert any(r.get("message", "").startswith("< Authorization: ***") for r in library)
    # ... its per-connection chatter is at debug, rtserver's connection_state lines stay.
    chatter = [r for r in library if r.get("message") in ("connection open", "connection closed")
               or str(r.get("message", "")).startswith("HTTP response sent")]
    assert chatter and all(r["level"] == "debug" for r in chatter)
    assert any(r.get("event") == "connection_state" and r["level"] == "info" for r in records)


async def test_info_run_has_no_websockets_chatter() -> None:
    proc = ServerProcess(["--log-level", "info"])
    try:
        port = await asyncio.to_thread(proc.wait_listening)
        for _ in range(3):
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                               timeout=5).read())
        tok = mint_token(SECRET, str(uuid.uuid4()), [], [], 600)
        async with connect(f"ws://127.0.0.1:{port}/ws?token={tok}") as ws:
            await ws.recv()
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
        proc.proc.send_signal(signal.SIGTERM)
        output = await asyncio.to_thread(_all_output, proc)
    finally:
        proc.stop()
    records = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert not [r for r in records if r.get("event") == "library_log"
                and r.get("logger", "").startswith("websockets")
                and r.get("message") != "server listening on 127.0.0.1:" + str(port)
                and "server clos" not in str(r.get("message"))]
    assert sum(1 for r in records if r.get("event") == "connection_state") >= 2


def test_dev_secret_not_in_json_log() -> None:
    env = {"RTSERVER_JWT_SECRET": ""}
    proc = ServerProcess(["--dev"], env=env)
    try:
        proc.wait_listening()
        [line] = proc.events("dev_secret_generated")
        assert "secret" not in line and line["shown_on_terminal"] is False
        assert "Required action" in line["note"]
    finally:
        proc.stop()


@pytest.mark.parametrize(("text", "hidden"), [
    ("redis://:pw1@host:6379/0", "pw1"),
    ("rediss://user:pw2@host", "pw2"),
    ("postgresql://u:pw3@db/x?sslmode=require", "pw3"),
    ("postgresql://u@db/x?password=pw4&sslmode=require", "pw4"),
    ("redis://:p@ss5@host/0", "ss5"),
    ("< GET /ws?a=1&token=tok6 HTTP/1.1", "tok6"),
    ("< Authorization: Bearer tok7", "tok7"),
    ("< authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ("< TEXT '{\"type\":\"auth\",\"token\":\"tok8\"}' [30 bytes]", "tok8"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln9", "c2ln9"),
])
def test_redact_text(text: str, hidden: str) -> None:
    assert hidden not in redact_text(text)
    assert "***" in redact_text(text)


def test_mask_url_keeps_what_is_not_secret() -> None:
    assert mask_url_credentials("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url_credentials("postgresql://app@db:5432/x") == "postgresql://app@db:5432/x"
    assert mask_url_credentials("redis://:pw@h/0") == "redis://:***@h/0"


def test_masked_config_hides_every_credential() -> None:
    config = load_config(env={}, flags={
        "jwt_secret": SECRET, "jwt_previous_secret": "prev-" + SECRET,
        "redis": "redis://admin:RedisPw@127.0.0.1:6379/0",
        "database": "postgresql://app:DbPw@127.0.0.1:5432/x"})
    text = orjson.dumps(masked(config)).decode()
    for secret in (SECRET, "RedisPw", "DbPw"):
        assert secret not in text
    data: dict[str, Any] = masked(config)
    assert data["bus"]["redis_url"] == "redis://admin:***@127.0.0.1:6379/0"
