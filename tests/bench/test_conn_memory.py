"""The memory-per-connection script runs a real server and client and attributes what
it measures (a small run)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import orjson

from rtserver.bench.conn_memory import categorize, client_argv


def test_conn_memory_small_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rtserver.bench.conn_memory", "--connections", "60",
         "--top", "5", "--json"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, (out.stdout[-1000:], out.stderr[:3000], out.stderr[-1500:])
    assert "Python heap per connection" in out.stdout
    report = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert report["connections"] == 60
    # A connection costs at least its frame protocol and its connection objects, both
    # allocated from ws_server.py (the compiled frame protocol has no Python frame).
    assert report["heap_per_connection"] > 2000
    cats = report["categories"]
    assert cats["rtserver connection layer (WsConnection)"] > 300
    # The quick upgrade leaves nothing of websockets' Sans-I/O protocol per connection.
    assert not any(k.startswith("websockets Sans-I/O") for k in cats), cats
    # No handler task per connection: websockets' asyncio layer allocates nothing.
    assert not any(k.startswith("websockets asyncio") for k in cats)
    assert sum(v for k, v in cats.items() if k.startswith("rtserver")) > 100


def test_categories() -> None:
    assert categorize("/x/site-packages/websockets/asyncio/messages.py").startswith(
        "websockets incoming")
    assert categorize("/x/rtserver/hub.py") == "rtserver hub tables"
    assert categorize("/usr/lib/python3.11/json/decoder.py") == "other (decoder.py)"


def test_client_argv_keeps_a_secret_that_starts_with_a_dash() -> None:
    args = argparse.Namespace(connections=5, room_size=2, in_flight=3)
    argv = client_argv(1234, args, "-Ab_c")
    parser = argparse.ArgumentParser()
    for flag in ("--client", "--connections", "--room-size", "--in-flight", "--secret"):
        parser.add_argument(flag)
    parsed = parser.parse_args(argv[3:])
    assert parsed.secret == "-Ab_c" and parsed.client == "1234"
