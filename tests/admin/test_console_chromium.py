"""The admin console in real Chromium (tests/admin/console_chromium.mjs, playwright-core from
clients/js/node_modules, Debian's /usr/bin/chromium): login, read-only mode without actions,
live counters and the latency chart while a client publishes, a user disconnected from the
page with the chosen close code, a Redis outage alert shown live and resolved from the page
(audited in PostgreSQL), and with two worker processes a SIGKILLed worker shown stale then
respawned. The Cluster and Traffic panels change from cluster_status pushes (no
GET /admin/cluster while the WebSocket is up; with the WebSocket cut, the page says so and
polls), and the publish accepted -> delivered latency of both workers appears. Screenshots go
to admin-artifacts/ (gitignored); any console error, page error, failed request or HTTP error
fails the run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import Client, ServerProcess, token
from tests.admin.conftest import new_prefix, redis_bus
from tests.domains.insurance.helpers import insurance
from tests.store.pgutil import free_port

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("console_chromium.mjs")
ARTIFACTS = REPO / "admin-artifacts"
CHROMIUM = "/usr/bin/chromium"
OPERATOR = "3c2b1a09-8f7e-4d6c-9b5a-493827160514"
VICTIM = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
ADMIN_CONFIG = {"refresh_seconds": 0.5, "stale_after": 2.0}


def _require_browser() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed. Required action: install nodejs (>= 20), as "
                    ".ci/run does")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing. Required action: apt-get install -y chromium "
                    "(as .ci/run does)")
    if not (REPO / "clients" / "js" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is missing. Required action: npm ci --prefix clients/js")
    return node


async def _drive(env: dict[str, str], handle: Any) -> dict[str, Any]:
    """Run the script; answer each of its steps with ``handle(step)``; return its result."""
    proc = await asyncio.create_subprocess_exec(
        _require_browser(), str(SCRIPT), env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    result: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(200):
            while line := await proc.stdout.readline():
                message = orjson.loads(line)
                if message.get("done"):
                    result = message
                    continue
                try:
                    answer = {"ok": True, **(await handle(message))}
                except Exception as exc:
                    proc.stdin.write(orjson.dumps({"ok": False, "error": repr(exc)}) + b"\n")
                    raise
                proc.stdin.write(orjson.dumps(answer) + b"\n")
                await proc.stdin.drain()
            stderr = (await proc.stderr.read()).decode(errors="replace")
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0 or result is None:
        pytest.fail(f"console_chromium.mjs exited {code}:\n{stderr[-8000:]}", pytrace=False)
    return result


async def test_console_panels_and_actions(domain_server: Any, ws: Any, redis_proc: Any,
                                          fresh_dsn: str) -> None:
    port = free_port()
    server = await domain_server(bus=redis_bus(redis_proc.port, new_prefix(), 0), dsn=fresh_dsn,
                                 config={"admin": ADMIN_CONFIG, "server": {
                                     "port": port,
                                     "allowed_origins": [f"http://127.0.0.1:{port}"]}})
    victim = await ws(server, token(VICTIM))
    member = await ws(server, token(rooms=["bench:*"]))
    await member.send({"type": "subscribe", "room": "bench:console"})
    await member.recv_type("subscribed")
    publisher = await ws(server, token(perms=["publish"], rooms=["bench:*"]))
    tasks: list[asyncio.Task[None]] = []
    acked = [0]
    stopping = asyncio.Event()

    async def publish() -> None:
        i = 0
        while not stopping.is_set():
            i += 1
            await publisher.request({"type": "publish", "room": "bench:console",
                                     "data": {"i": i}, "id": i}, "ack")
            acked[0] = i
            await asyncio.sleep(0.02)

    async def drain() -> None:
        while True:
            await member.recv(60)

    async def handle(message: dict[str, Any]) -> dict[str, Any]:
        match message["step"]:
            case "raise_alert":
                sent = await insurance(server).alerts.raise_alert(
                    "console_check", "medium", "raised for the console test", {})
                assert sent is not None and sent.alert_id is not None
                return {"alert_id": sent.alert_id}
            case "victim_user":
                return {"user": VICTIM}
            case "publish_start":
                tasks.extend([asyncio.create_task(publish()), asyncio.create_task(drain())])
                return {}
            case "publish_stop":
                stopping.set()  # after its current ack: every publication is acked
                await tasks[0]
                tasks[1].cancel()
                # The page checks the room's last seq, messages/s and history depth.
                return {"published": acked[0],
                        "history_size": server.node.bus.settings.history_size,
                        "rate_window": server.config.admin.room_rate_window}
            case "victim_closed":
                async with asyncio.timeout(10):
                    await victim.ws.wait_closed()
                assert (victim.ws.close_code, victim.ws.close_reason) == (
                    message["code"], message["reason"])
                return {}
            case "stop_redis":
                redis_proc.stop()
                return {}
        raise AssertionError(f"unknown step {message}")

    result = await _drive({
        "CONSOLE_URL": f"http://127.0.0.1:{server.port}", "ARTIFACTS": str(ARTIFACTS),
        "OPERATOR_TOKEN": token(OPERATOR, ["admin:monitor", "admin:operate"]),
        "READONLY_TOKEN": token(perms=["admin:monitor"]), "SCENARIO": "single"}, handle)
    for task in tasks:
        task.cancel()
    pg = await asyncpg.connect(fresh_dsn)
    try:
        alert = await pg.fetchrow("SELECT * FROM system_alerts WHERE id = $1",
                                  result["resolved_alert"])
        audit = await pg.fetch(
            "SELECT * FROM admin_activity_logs WHERE action = 'admin_resolve_alert' "
            "AND resource_id = $1", str(result["resolved_alert"]))
        disconnect = await pg.fetch(
            "SELECT * FROM admin_activity_logs WHERE action = 'admin_disconnect' "
            "AND resource_id = $1", VICTIM)
    finally:
        await pg.close()
    assert alert["alert_type"] == "component_degraded" and alert["resolved"]
    assert alert["resolved_by"] == OPERATOR
    assert [(r["admin_user_id"], r["status"]) for r in audit] == [(OPERATOR, "resolved")]
    assert "redis restarted by the test" in audit[0]["details"]
    assert [r["status"] for r in disconnect] == ["sent"]
    for name in ("login", "read-only", "console", "rooms", "connection", "alert", "audit"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 0


def _drain(proc: ServerProcess, stop: threading.Event) -> None:
    """Keep reading the server's log (a full pipe would block it), parsing its lines."""
    assert proc.proc.stderr is not None
    fd = proc.proc.stderr.fileno()
    pending = getattr(proc, "_pending", b"")
    while not stop.is_set():
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.startswith(b"{"):
                proc.lines.append(orjson.loads(line))


async def test_killed_worker_turns_stale_then_respawns(fresh_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "admin.toml"
    port = free_port()
    config.write_text(f'[server]\nallowed_origins = ["http://127.0.0.1:{port}"]\n'
                      # The respawn waits longer than stale_after: the page must show the
                      # worker stale before it comes back.
                      "[workers]\nrestart_delay = 4.0\n"
                      "[admin]\nrefresh_seconds = 1.0\nstale_after = 2.0\n")
    stop = threading.Event()
    proc = ServerProcess(["--workers", "2", "--database", fresh_dsn, "--config", str(config)],
                         env={"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                              "RTSERVER_PORT": str(port)},
                         listening_lines=2)
    try:
        assert await asyncio.to_thread(proc.wait_listening, 60.0) == port
        threading.Thread(target=_drain, args=(proc, stop), daemon=True).start()

        clients: list[Client] = []
        publishing: list[asyncio.Task[None]] = []

        async def publish_across() -> None:
            """Members and publishers on both workers (SO_REUSEPORT spreads them)."""
            tok = token(perms=["publish"], rooms=["bench:*"])
            by_worker: dict[int, list[Client]] = {0: [], 1: []}
            for _ in range(200):
                if min(len(v) for v in by_worker.values()) >= 2:
                    break
                c = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={tok}"))
                clients.append(c)
                by_worker[(await c.recv())["worker"]].append(c)
                await c.recv_type("authenticated")
            assert min(len(v) for v in by_worker.values()) >= 2, "both workers got clients"
            for w in (0, 1):
                await by_worker[w][0].request({"type": "subscribe", "room": "bench:across"},
                                              "subscribed")

            async def run(member: Client, publisher: Client) -> None:
                i = 0
                while True:
                    i += 1
                    await publisher.send({"type": "publish", "room": "bench:across",
                                          "data": {"i": i}})
                    await member.recv_type("message")
                    await asyncio.sleep(0.02)

            publishing.extend(asyncio.create_task(run(by_worker[w][0], by_worker[w][1]))
                              for w in (0, 1))

        async def handle(message: dict[str, Any]) -> dict[str, Any]:
            match message["step"]:
                case "publish_across":
                    await publish_across()
                    return {}
                case "publish_stop":
                    for task in publishing:
                        task.cancel()
                    for c in clients:
                        await c.ws.close()
                    return {}
                case "kill_worker":
                    started = {r["worker_id"]: r["pid"] for r in proc.events("worker_started")}
                    os.kill(started[1], signal.SIGKILL)
                    return {"worker": 1}
            raise AssertionError(f"unknown step {message}")

        await _drive({"CONSOLE_URL": f"http://127.0.0.1:{port}", "ARTIFACTS": str(ARTIFACTS),
                      "OPERATOR_TOKEN": token(OPERATOR, ["admin:monitor", "admin:operate"]),
                      "SCENARIO": "workers"}, handle)
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            proc.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.proc.wait, 30.0)
    assert (ARTIFACTS / "worker-respawned.png").stat().st_size > 0
