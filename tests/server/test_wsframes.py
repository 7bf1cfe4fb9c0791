"""The compiled frame protocol (rtserver/_wsframes.pyx) against websockets' ServerProtocol.

Bytes only: both protocols, opened the way the connection layer opens them, are fed the
same byte streams (valid and invalid frames of every kind, split at random points and at
every byte, with and without the end of the stream) and must produce the same events,
bytes out, states, close frames and parser errors. Then over a real server: the quick
upgrade runs on the frame protocol, a request only websockets reads runs on websockets'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import CLOSED, CONNECTING, OPEN
from websockets.server import ServerProtocol

from conftest import ServerFactory, make_config, token
from rtserver._wsframes import FrameProtocol
from rtserver.server import RtServer

#: FrameProtocol writes websockets 17's log lines; websockets 16 (the dependency floor)
#: wrote "< EOF" instead of "connection closed" at the end of a closed stream, and
#: nothing else differs: the lines are compared from 17 on.
SAME_LOG_LINES = int(websockets.__version__.split(".")[0]) >= 17


class _Lines(logging.Handler):
    """The log lines of one protocol (debug included), as formatted text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _pair(max_size: int | None, debug: bool = False) -> tuple[Any, Any, _Lines, _Lines]:
    """websockets' protocol and the frame protocol, both OPEN and reading frames."""
    lines = []
    loggers = []
    for name in ("a", "b"):
        logger = logging.getLogger(f"test.wsframes.{name}")
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        handler = _Lines()
        logger.addHandler(handler)
        lines.append(handler)
        loggers.append(logger)
    theirs = ServerProtocol(max_size=max_size, logger=loggers[0])
    theirs.state = OPEN
    theirs.parser = theirs.parse()
    next(theirs.parser)
    ours = FrameProtocol(max_size=max_size, logger=loggers[1])
    ours.start()
    return theirs, ours, lines[0], lines[1]


def _snapshot(p: Any) -> tuple[Any, ...]:
    exc = p.parser_exc
    return (p.state, p.close_rcvd, p.close_sent, p.close_rcvd_then_sent, p.eof_sent,
            None if exc is None else (type(exc).__name__, str(exc)), p.close_expected(),
            p.current_size, p.close_code)


def _step(p: Any, call: Any) -> tuple[Any, ...]:
    try:
        call(p)
        result: Any = "ok"
    except Exception as exc:  # noqa: BLE001 - compared between the two protocols
        result = (type(exc).__name__, str(exc))
    return (result, p.events_received(), p.data_to_send(), _snapshot(p))


def _same(chunks: list[bytes], *, eof: bool, max_size: int | None, debug: bool = False,
          then: Any = None) -> tuple[Any, Any]:
    theirs, ours, their_lines, our_lines = _pair(max_size, debug)
    for chunk in chunks:
        expected = _step(theirs, lambda p, c=chunk: p.receive_data(c))
        assert _step(ours, lambda p, c=chunk: p.receive_data(c)) == expected, chunks
    if eof:
        expected = _step(theirs, lambda p: p.receive_eof())
        assert _step(ours, lambda p: p.receive_eof()) == expected, chunks
    if then is not None:
        expected = _step(theirs, then)
        assert _step(ours, then) == expected, chunks
    if SAME_LOG_LINES:
        assert our_lines.lines == their_lines.lines
    return theirs, ours


def _frame(opcode: int, data: bytes, *, fin: bool = True, mask: bool = True,
           rsv: int = 0, key: bytes | None = None) -> bytes:
    """A client frame, built by hand (invalid ones too)."""
    head1 = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    n = len(data)
    if n < 126:
        head = bytes([head1, bit | n])
    elif n < 65536:
        head = bytes([head1, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([head1, bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + data
    key = key if key is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def _random_frame(rng: random.Random) -> bytes:
    opcode = (rng.choice([0, 1, 2, 8, 9, 10, 3, 7, 11, 15]) if rng.random() < 0.3
              else rng.choice([1, 1, 2, 9, 10, 8, 0]))
    size = (rng.choice([0, 1, 5, 125, 126, 200, 1000, 1001, 70_000]) if rng.random() < 0.3
            else rng.randint(0, 60))
    if opcode == 8 and rng.random() < 0.7:
        code = rng.choice([1000, 1001, 1005, 1006, 1002, 3000, 4999, 999, 5000, 1015, 1012])
        reason = rng.choice([b"", b"bye", "é".encode(), b"\xff\xfe", b"x" * 130])
        data = struct.pack("!H", code) + reason
    else:
        data = rng.randbytes(size) if rng.random() < 0.3 else b"a" * size
    return _frame(opcode, data, fin=rng.random() < 0.85, mask=rng.random() < 0.97,
                  rsv=rng.choice([0] * 12 + [0x40, 0x20, 0x10]))


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


_CALLS: list[Any] = [
    lambda p: p.send_close(1001, "going away"),
    lambda p: p.send_close(),
    lambda p: p.send_close(None, "a reason without a code"),
    lambda p: p.send_close(1005, "reserved code"),
    lambda p: p.fail(1011, "internal error"),
    lambda p: p.fail(1006),
    lambda p: p.send_ping(b"12"),
    lambda p: p.send_pong(b"1" * 126),
    lambda p: p.send_text(b"hi"),
    lambda p: p.send_binary(b"\x00\x01"),
    lambda p: p.send_text(b"x" * 70_000),
    lambda p: p.receive_eof(),
]


@pytest.mark.parametrize("seed", range(8))
def test_random_streams_give_websockets_results(seed: int) -> None:
    """Random valid and invalid frames, split anywhere, with or without EOF, then one
    sending call: every event, byte, state and error as websockets has them."""
    rng = random.Random(seed)
    errors: set[str] = set()
    for _ in range(500):
        stream = b"".join(_random_frame(rng) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.3:
            stream = stream[:rng.randint(0, len(stream))]
        theirs, _ = _same(_split(stream, rng), eof=rng.random() < 0.4,
                          max_size=rng.choice([1000, None, 100]), then=rng.choice(_CALLS))
        if theirs.parser_exc is not None:
            errors.add(str(theirs.parser_exc).split(" ")[0])
    # The streams reached the failures that matter, not only the happy path.
    assert {"invalid", "incorrect", "reserved", "control", "fragmented", "frame",
            "unexpected", "expected"} <= errors, errors


def test_every_split_of_a_message_and_a_close() -> None:
    stream = (_frame(1, b"hello") + _frame(9, b"p") + _frame(2, b"x" * 300)
              + _frame(8, struct.pack("!H", 1000) + b"bye") + _frame(1, b"after"))
    for cut in range(len(stream) + 1):
        _, ours = _same([stream[:cut], stream[cut:]], eof=True, max_size=1000)
        assert ours.state is CLOSED and ours.close_rcvd == Close(1000, "bye")
        _same([stream[:cut]], eof=True, max_size=1000)
    for size in (125, 126, 65_535, 65_536):  # each length encoding, byte by byte
        data = _frame(2, b"z" * size)
        _same([data[i:i + 1] for i in range(min(len(data), 12))] + [data[12:]],
              eof=False, max_size=None)


def test_fragmented_messages_and_their_size_limit() -> None:
    parts = [_frame(1, b"ab", fin=False), _frame(9, b"ping"), _frame(0, b"cd", fin=False),
             _frame(0, b"ef")]
    _, ours = _same(parts, eof=False, max_size=6)
    assert ours.state is OPEN and ours.current_size is None
    # One byte more than the limit over three fragments: 1009, with websockets' message.
    over = [_frame(1, b"abc", fin=False), _frame(0, b"de", fin=False), _frame(0, b"fg")]
    _, ours = _same(over, eof=False, max_size=6)
    assert ours.close_sent.code == 1009 and "after reading 5 bytes" in ours.close_sent.reason


@pytest.mark.skipif(not SAME_LOG_LINES, reason="websockets 16 wrote other log lines")
def test_debug_log_lines_are_websockets() -> None:
    stream = _frame(1, b"hi") + _frame(9, b"") + _frame(8, struct.pack("!H", 1000))
    _same([stream], eof=True, max_size=1000, debug=True, then=lambda p: p.receive_eof())
    _same([_frame(1, b"x", rsv=0x40)], eof=True, max_size=1000, debug=True)


def test_eof_before_any_request() -> None:
    """Ended before a request (still CONNECTING): the end of the stream, CLOSED."""
    theirs = ServerProtocol()
    theirs.receive_eof()
    ours = FrameProtocol()
    ours.receive_eof()
    assert ours.data_to_send() == theirs.data_to_send() == [b""]
    assert ours.state is theirs.state is CLOSED
    assert type(ours.handshake_exc) is type(theirs.handshake_exc)
    assert str(ours.handshake_exc) == str(theirs.handshake_exc)


def test_misuse_is_refused() -> None:
    ours = FrameProtocol()
    assert ours.state is CONNECTING and not ours.close_expected()
    with pytest.raises(AssertionError):
        ours.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # requests are websockets' to read
    with pytest.raises(InvalidState):
        ours.send_close(1000)
    ours.start()
    with pytest.raises(AssertionError):
        ours.start()
    with pytest.raises(NotImplementedError):
        ours.send_text(b"part", fin=False)
    ours.receive_eof()
    with pytest.raises(EOFError):
        ours.receive_data(b"\x81")
    assert ours.id == ours.id  # one uuid, made once


def test_unmasking_every_length_and_offset() -> None:
    """The 8-byte unmasking loop and its tail, for every length up to 40."""
    key = bytes([0x37, 0xFA, 0x21, 0x3D])
    for n in range(41):
        data = bytes(range(n))
        ours = FrameProtocol(max_size=None)
        ours.start()
        ours.receive_data(_frame(2, data, key=key))
        assert ours.events_received() == [Frame(Opcode.BINARY, data)]


async def test_the_quick_upgrade_runs_on_the_frame_protocol(
        make_server: ServerFactory) -> None:
    """Over a real server: a plain client gets the frame protocol, one offering
    compression (a request only websockets reads) gets websockets'; both exchange
    messages, pings and the closing handshake."""
    server: RtServer = await make_server(make_config())
    kinds: list[type[Any]] = []
    for compression in (None, "deflate"):
        async with connect(f"ws://127.0.0.1:{server.port}/ws?token={token()}",
                           compression=compression) as ws:
            await ws.recv()  # the welcome
            await ws.recv()  # authenticated
            (conn,) = server.node.hub.connections.values()
            kinds.append(type(conn.ws.protocol))
            await ws.send('{"type":"ping","id":1}')
            assert '"pong"' in str(await ws.recv())
            await asyncio.wait_for(await ws.ping(b"x"), 5)
        assert ws.close_code == 1000
        while server.node.hub.connections:
            await asyncio.sleep(0.01)
    assert kinds == [FrameProtocol, ServerProtocol]
