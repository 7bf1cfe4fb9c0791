"""Every close code rtserver sends, provoked for real, and the docs table that lists them.

Codes already provoked by other tests against a real server are referenced in
``ELSEWHERE`` (checked to exist) rather than run twice; the others are
provoked here. ``test_every_code_is_covered`` fails when a code is added to
``CloseCode`` without a test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Client, ServerFactory, make_config, token, ws_url
from rtserver.protocol.close_codes import RECONNECT, CloseCode, close_label
from rtserver.server import RtServer
from tests.server.slow_client import (
    SLOW_LIMITS,
    connect_slow,
    drain_close_code,
    flood_until_closed,
)

ROOT = Path(__file__).resolve().parents[2]

#: Tests elsewhere that provoke a code against a real server and assert it.
ELSEWHERE: dict[int, list[str]] = {
    CloseCode.POLICY: ["tests/server/test_connection.py::test_too_many_errors_closes_1008",
                       "tests/protocol/test_policy_close.py::"
                       "test_client_ignoring_the_close_frame_publishes_nothing"],
    CloseCode.TOO_BIG: ["tests/server/test_connection.py::test_frame_too_large_closes_1009"],
    CloseCode.INTERNAL: ["tests/server/test_connection.py::test_unanswered_ws_pings_close_1011",
                         "tests/server/test_connection.py::"
                         "test_server_bug_closes_1011_and_is_counted"],
    CloseCode.RESTART: ["tests/server/test_cli.py::test_sigterm_drains_with_1012",
                        "tests/server/test_workers_cli.py::"
                        "test_serve_two_workers_cross_worker_room_and_drain"],
    CloseCode.AUTH_FAILED: ["tests/server/test_connection.py::test_bad_url_token_closes_4001",
                            "tests/server/test_connection.py::test_first_frame_auth_failure",
                            "tests/server/test_connection.py::test_missing_token_auth_timeout"],
    CloseCode.IDLE: ["tests/server/test_connection.py::test_idle_timeout_closes_4008"],
    CloseCode.USER_LIMIT: ["tests/server/test_user_limit.py::test_per_user_limit",
                           "tests/server/test_user_limit.py::test_anonymous_upgrade_counts_too"],
}

#: Tests in this file, by the code they provoke.
HERE: dict[int, list[str]] = {
    CloseCode.NORMAL: ["test_normal_1000_answers_the_clients_close"],
    CloseCode.TRY_AGAIN_LATER: ["test_slow_consumer_closes_1013"],
    CloseCode.AUTH_FAILED: ["test_token_expiring_while_connected_closes_4001"],
}


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


def test_every_code_is_covered() -> None:
    assert set(ELSEWHERE) | set(HERE) == {int(c) for c in CloseCode}
    for code, refs in ELSEWHERE.items():
        for ref in refs:
            path, name = ref.split("::")
            assert name in _test_names(ROOT / path), f"{ref} (close {code}) does not exist"
            assert str(int(code)) in (ROOT / path).read_text(), f"{ref} never asserts {code}"
    here = _test_names(Path(__file__))
    for names in HERE.values():
        assert set(names) <= here


def _tables(section: str) -> list[list[list[str]]]:
    """The Markdown tables of ``section``: rows of cells, header and rule dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
                continue  # the header
            if set("".join(cells)) <= {"-", ":"}:
                continue
            current.append(cells)
        else:
            current = None
    return tables


def test_docs_table_lists_exactly_the_close_codes_and_reconnect() -> None:
    text = (ROOT / "docs/protocol.md").read_text()
    section = text.split("\n## Close codes\n", 1)[1].split("\n## ", 1)[0]
    main, library = _tables(section)[:2]
    documented = {int(row[0]): row for row in main}
    assert sorted(documented) == sorted(int(c) for c in CloseCode)
    for code, row in documented.items():
        assert row[1].strip("`") == CloseCode(code).name
        assert row[3] == RECONNECT[code], f"reconnect of {code}: docs {row[3]!r}"
        assert row[2] and row[4], f"{code} needs a meaning and how to reconnect"
    assert set(RECONNECT.values()) <= {"backoff", "token", "never"}
    assert set(RECONNECT) == {int(c) for c in CloseCode}
    # Codes of the WebSocket layer: not rtserver's own, but known metric labels.
    layer = [int(row[0]) for row in library]
    assert layer and not set(layer) & set(documented)
    assert all(close_label(code) == str(code) for code in layer)
    for word in re.findall(r"`(backoff|token|never)`", section):
        assert word in RECONNECT.values()


async def test_normal_1000_answers_the_clients_close(server: RtServer) -> None:
    ws = await connect(ws_url(server, token()))
    client = Client(ws)
    assert (await client.recv())["type"] == "connection"
    assert (await client.recv())["type"] == "authenticated"
    await ws.close(1000, "bye")
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == CloseCode.NORMAL


async def test_slow_consumer_closes_1013(make_server: ServerFactory) -> None:
    server = await make_server(make_config(limits=SLOW_LIMITS))
    slow, slow_id = await connect_slow(server, token(rooms=["bench:*"]))
    await slow.request({"type": "subscribe", "room": "bench:slow"}, "subscribed")
    ws = await connect(ws_url(server, token(perms=["publish"], rooms=["bench:*"])))
    publisher = Client(ws)
    await publisher.recv()
    await publisher.recv()
    try:
        assert await flood_until_closed(server, slow_id, publisher, "bench:slow") > 1
        assert await drain_close_code(slow) == CloseCode.TRY_AGAIN_LATER
        # The publisher is unaffected.
        assert (await publisher.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
    finally:
        await ws.close()


async def test_token_expiring_while_connected_closes_4001(make_server: ServerFactory) -> None:
    server = await make_server(make_config(heartbeat={"interval": 0.1}))
    ws = await connect(ws_url(server, token(ttl=1.5)))
    client = Client(ws)
    assert (await client.recv())["type"] == "connection"
    assert (await client.recv())["type"] == "authenticated"
    err = await client.recv_type("error", timeout=10.0)
    assert err["code"] == "token_expired" and err["action"].startswith("Required action")
    try:
        while True:
            await client.recv(timeout=10.0)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == CloseCode.AUTH_FAILED
        assert exc.rcvd.reason == "token expired"
