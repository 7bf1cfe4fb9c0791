"""Nothing a client sends reaches a traceback: each hostile class of frame, before and
after authentication, against a real server process whose log is read afterwards."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import SECRET, ServerProcess
from rtserver.auth import mint_token

DEPTH = 1000


def _nest(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


#: (name, frame, error code) - each answered with an error frame, never a close.
CLASSES: list[tuple[str, str | bytes, str]] = [
    ("deep_array_in_publish_data",
     '{"type":"publish","room":"bench:r","data":' + _nest(DEPTH) + "}", "nesting_too_deep"),
    ("deep_object_in_unknown_field",
     '{"type":"ping","x":' + '{"a":' * DEPTH + "1" + "}" * DEPTH + "}", "nesting_too_deep"),
    ("deep_bare_array", _nest(5 * DEPTH), "nesting_too_deep"),
    ("deep_unclosed_array", "[" * (5 * DEPTH), "nesting_too_deep"),
    ("deep_unclosed_data", '{"type":"publish","room":"bench:r","data":' + "[" * (5 * DEPTH),
     "nesting_too_deep"),
    ("deep_array_in_id", '{"type":"ping","id":' + _nest(DEPTH) + "}", "nesting_too_deep"),
    ("huge_int_id", '{"type":"ping","id":' + "9" * 400 + "}", "number_out_of_range"),
    ("int64_overflow_id", '{"type":"ping","id":9223372036854775808}', "number_out_of_range"),
    ("huge_float_id", '{"type":"ping","id":1e400}', "invalid_field"),
    ("lone_surrogate_escape", '{"type":"ping","id":"\\ud800"}', "invalid_json"),
    ("room_wrong_type", '{"type":"subscribe","room":5}', "invalid_field"),
    ("id_wrong_type", '{"type":"ping","id":true}', "invalid_field"),
    ("not_an_object", "[1,2,3]", "invalid_message"),
    ("unknown_type", '{"type":"explode"}', "unknown_type"),
    ("unknown_field", '{"type":"ping","pwn":1}', "unknown_field"),
    ("missing_field", '{"type":"unsubscribe"}', "missing_field"),
    ("not_json", "{", "invalid_json"),
    ("nul_bytes", "\x00\x00", "invalid_json"),
    ("binary_frame", b"\x00\xff", "binary_not_supported"),
]


async def _open(port: int, tok: str | None) -> ClientConnection:
    url = f"ws://127.0.0.1:{port}/ws" + (f"?token={tok}" if tok else "")
    ws = await connect(url, max_size=None, compression=None)
    welcome = orjson.loads(await ws.recv())
    assert welcome["type"] == "connection"
    if tok is not None:
        assert orjson.loads(await ws.recv())["type"] == "authenticated"
    return ws


async def _next_error(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            msg = orjson.loads(await ws.recv())
            if msg["type"] == "error":
                return dict(msg)


async def _closed_with(ws: ClientConnection) -> int:
    async with asyncio.timeout(5):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the server sent no close frame"
            return exc.rcvd.code


@pytest.fixture
def server_proc() -> Any:
    proc = ServerProcess(["--log-level", "info"])
    yield proc
    proc.stop()


async def test_hostile_frames_before_and_after_auth(server_proc: ServerProcess) -> None:
    port = await asyncio.to_thread(server_proc.wait_listening)
    tok = mint_token(SECRET, str(uuid.uuid4()), ["publish"], ["bench:*"], 600)
    for label, token in (("before_auth", None), ("after_auth", tok)):
        ws = await _open(port, token)
        for name, frame, code in CLASSES:
            await ws.send(frame)
            err = await _next_error(ws)
            assert err["code"] == code, (label, name, err)
            assert err["action"].startswith("Required action"), (label, name, err)
        # The connection is still usable: not closed 1011 or otherwise.
        await ws.send('{"type":"ping","id":"still-alive"}')
        async with asyncio.timeout(5):
            while (msg := orjson.loads(await ws.recv()))["type"] != "pong":
                assert msg["type"] in ("heartbeat", "error"), msg
        assert msg["id"] == "still-alive"
        await ws.close()

    # Closes that the websockets layer answers: too big (1009), invalid UTF-8 (1007).
    for token in (None, tok):
        ws = await _open(port, token)
        await ws.send("x" * (65536 + 1))
        assert await _closed_with(ws) == 1009
        ws = await _open(port, token)
        await ws.send(b'{"type":"ping","id":"\xff\xfe"}', text=True)
        assert await _closed_with(ws) == 1007

    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    text = metrics.decode()
    for code in ("nesting_too_deep", "number_out_of_range", "invalid_json", "invalid_field"):
        assert f'code="{code}"' in text, code
    assert 'code="internal_error"' not in text

    server_proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server_proc.read_rest) == 0
    errors = [r for r in server_proc.lines if r.get("level") == "error"]
    assert errors == []
    assert not any("traceback" in r or "Traceback" in str(r) for r in server_proc.lines)
    summaries = server_proc.events("client_decode_failures")
    assert summaries and all(r["level"] == "warning" for r in summaries)
    # Rate-limited: far fewer summary lines than failures.
    failures = 2 * sum(1 for _, _, code in CLASSES if code != "binary_not_supported")
    assert len(summaries) < failures / 4
    assert summaries[0]["total"] >= 1
