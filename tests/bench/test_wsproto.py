"""Frame-level tests of the generator's minimal WebSocket client."""

from __future__ import annotations

import pytest

from rtserver.bench.wsproto import (
    OP_CONT,
    OP_TEXT,
    FrameError,
    accept_key,
    masked_frame,
    parse_frames,
    parse_handshake_response,
)


def unmask(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    hdr = 2 if n < 126 else (4 if n == 126 else 10)
    mask = frame[hdr : hdr + 4]
    body = frame[hdr + 4 :]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(body))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_masked_frame_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = masked_frame(payload)
    assert frame[0] == 0x80 | OP_TEXT
    assert frame[1] & 0x80, "client frames must be masked"
    assert unmask(frame) == payload


def test_parse_frames_keeps_partial_tail() -> None:
    a = b"\x81\x05hello"
    b = b"\x01\x03abc" + b"\x80\x02de"
    big = b"\x81\x7e\x01\x00" + b"x" * 256
    data = a + b + big
    out: list[tuple[int, bool, bytes]] = []
    used = parse_frames(data[:-10], out)
    assert out == [(OP_TEXT, True, b"hello"), (OP_TEXT, False, b"abc"), (OP_CONT, True, b"de")]
    assert used == len(a + b)
    out.clear()
    assert parse_frames(data[used:], out) == len(big)
    assert out == [(OP_TEXT, True, b"x" * 256)]


def test_parse_frames_rejects_masked_server_frame() -> None:
    with pytest.raises(FrameError):
        parse_frames(b"\x81\x85abcdefghi", [])


def test_handshake_response_checks_status_and_accept() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    acc = accept_key(key)
    assert acc == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + acc
    assert parse_handshake_response(ok, acc) is None
    assert parse_handshake_response(ok, b"other") == "handshake: Sec-WebSocket-Accept mismatch"
    assert (
        parse_handshake_response(b"HTTP/1.1 403 Forbidden\r\n", acc) == "handshake: HTTP status 403"
    )
