"""`rtserver serve --workers 2` as a user runs it: SO_REUSEPORT workers, cross-worker rooms."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Client, ServerProcess, token


async def test_serve_two_workers_cross_worker_room_and_drain() -> None:
    proc = ServerProcess(["--workers", "2"], listening_lines=2)
    try:
        port = await asyncio.to_thread(proc.wait_listening, 60.0)
        clients: list[Client] = []
        workers: set[int] = set()
        for _ in range(40):
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token="
                               f"{token(perms=['publish'], rooms=['bench:*'])}")
            c = Client(ws)
            workers.add((await c.recv())["worker"])
            await c.recv()
            clients.append(c)
            if len(workers) == 2 and len(clients) >= 4:
                break
        assert workers == {0, 1}, "the kernel spread no connection to one of the workers"
        for c in clients:
            await c.request({"type": "subscribe", "room": "bench:cross"}, "subscribed")
        for i in range(10):
            await clients[0].send({"type": "publish", "room": "bench:cross", "data": i})
        for c in clients:
            got = []
            while len(got) < 10:
                msg = await c.recv()
                if msg["type"] == "message":
                    got.append(msg)
            seqs = [g["seq"] for g in got]
            assert seqs == list(range(seqs[0], seqs[0] + 10)) and [g["data"] for g in got] == \
                list(range(10))

        def health() -> dict[str, object]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                return dict(orjson.loads(r.read()))

        doc = await asyncio.to_thread(health)
        assert doc["status"] == "ok" and set(doc["workers"]) == {"0", "1"}  # type: ignore[arg-type]

        # A monitoring admin on worker 0 is told when worker 1 dies and is respawned.
        admin = None
        for _ in range(40):
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token="
                               f"{token(perms=['admin:monitor'])}")
            c = Client(ws)
            worker = (await c.recv())["worker"]
            await c.recv()
            if worker == 0:
                admin = c
                break
            await ws.close()
        assert admin is not None
        await admin.send({"type": "start_monitoring", "update_interval": 5})
        pids = {r["worker_id"]: r["pid"] for r in proc.events("worker_started")}
        os.kill(pids[1], signal.SIGKILL)
        async with asyncio.timeout(30):
            while True:
                msg = await admin.recv(timeout=30)
                if msg["type"] == "admin_alert" and msg["alert_type"] == "worker_respawned":
                    break
        assert msg["severity"] == "high" and "SIGKILL" in msg["message"]
        clients = [c for c in clients if c.ws.state.name == "OPEN"]
        clients.append(admin)

        proc.proc.send_signal(signal.SIGTERM)
        for c in clients:
            try:
                async with asyncio.timeout(20):
                    while True:
                        await c.ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1012
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
    finally:
        proc.stop()
