"""The command line and process lifecycle: serve, token, refusals, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import jwt
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import SECRET, Client, ServerProcess
from rtserver.auth import mint_token


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rtserver", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def test_token_command() -> None:
    user = str(uuid.uuid4())
    out = run_cli("token", "--user", user, "--perm", "quote:read", "--perm", "publish",
                  "--room", "quote:*", "--ttl", "60", env={"RTSERVER_JWT_SECRET": SECRET})
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == user and claims["perms"] == ["quote:read", "publish"]
    assert claims["rooms"] == ["quote:*"] and claims["exp"] - claims["iat"] == 60


def test_token_without_secret_refused() -> None:
    out = run_cli("token", "--user", str(uuid.uuid4()), "--ttl", "60")
    assert out.returncode == 2 and "RTSERVER_JWT_SECRET" in out.stderr


def test_serve_without_secret_refused() -> None:
    out = run_cli("serve", "--port", "0")
    assert out.returncode == 2
    assert "auth.jwt_secret" in out.stderr and "RTSERVER_JWT_SECRET" in out.stderr


def test_serve_invalid_config_names_key(tmp_path: object) -> None:
    out = run_cli("serve", "--port", "99999", env={"RTSERVER_JWT_SECRET": SECRET})
    assert out.returncode == 2 and "server.port" in out.stderr


def test_serve_refuses_without_extension() -> None:
    # Simulate a checkout where the extension was never built: hide it from the import.
    code = ("import sys; sys.modules['rtserver._fanout'] = None; "
            "from rtserver.cli import main; raise SystemExit(main(['serve', '--port', '0']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    env["RTSERVER_JWT_SECRET"] = SECRET
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "rtserver._fanout" in out.stderr and "pip install ." in out.stderr


def test_dev_mode_announces_generated_secret() -> None:
    proc = ServerProcess(["--dev"], env={"RTSERVER_JWT_SECRET": ""})
    try:
        proc.wait_listening()
        assert proc.events("dev_secret_generated")
    finally:
        proc.stop()


async def test_sigterm_drains_with_1012() -> None:
    proc = ServerProcess(["--fanout", "compiled"])
    try:
        port = await asyncio.to_thread(proc.wait_listening)
        tok = mint_token(SECRET, str(uuid.uuid4()), [], ["bench:*"], 600)
        clients = []
        for _ in range(3):
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={tok}")
            c = Client(ws)
            await c.recv()
            await c.recv()
            clients.append(c)
        proc.proc.send_signal(signal.SIGTERM)
        for c in clients:
            try:
                async with asyncio.timeout(10):
                    while True:
                        await c.ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1012
        rc = await asyncio.to_thread(proc.proc.wait, 20)
        assert rc == 0
        rest = proc.proc.stderr.read() if proc.proc.stderr else ""
        events = [orjson.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
        assert "draining" in events and "stopped" in events
    finally:
        proc.stop()
