"""Framing and loader tests: identical bytes in both implementations, explicit refusal."""

from __future__ import annotations

import sys
from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode

import rtserver
from rtserver import fanout_reference
from rtserver.fanout import BUILD_HINT, FanoutUnavailable, load_fanout

SIZES = (0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20)


def _payload(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def _parse(frame: bytes) -> Frame:
    """Decode with the websockets sans-I/O frame parser (an independent parser)."""
    chunks = [frame]

    def read_exact(n: int) -> Generator[None, None, bytes]:
        data = chunks[0][:n]
        chunks[0] = chunks[0][n:]
        assert len(data) == n
        yield from ()
        return data

    gen = Frame.parse(read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as stop:
        assert chunks[0] == b"", "trailing bytes after the frame"
        result: Frame = stop.value
        return result
    raise AssertionError("parser wanted more data")


@pytest.mark.parametrize("size", SIZES)
def test_frame_bytes_identical_and_valid(size: int) -> None:
    compiled = load_fanout("compiled")
    payload = _payload(size)
    assert len(payload) == size
    ref = fanout_reference.frame_text(payload)
    assert compiled.frame_text(payload) == ref
    frame = _parse(ref)
    assert frame.opcode is Opcode.TEXT
    assert frame.fin is True
    assert frame.data == payload
    header = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(ref) == header + size


def test_frame_accepts_bytes_like_and_rejects_str() -> None:
    compiled = load_fanout("compiled")
    for mod in (compiled, fanout_reference):
        assert mod.frame_text(bytearray(b"abc")) == b"\x81\x03abc"
        assert mod.frame_text(memoryview(b"abc")) == b"\x81\x03abc"
        with pytest.raises(TypeError):
            mod.frame_text("abc")


def test_same_public_surface() -> None:
    compiled = load_fanout("compiled")
    assert compiled.STATS_KEYS == fanout_reference.STATS_KEYS
    assert compiled.IOV_BATCH == fanout_reference.IOV_BATCH
    for name in ("Fanout", "Sink", "frame_text"):
        assert hasattr(compiled, name)


def test_load_python_is_the_reference() -> None:
    assert load_fanout("python") is fanout_reference


def test_load_compiled_refuses_without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a checkout where the extension was never built.
    monkeypatch.setitem(sys.modules, "rtserver._fanout", None)
    monkeypatch.delattr(rtserver, "_fanout", raising=False)
    with pytest.raises(FanoutUnavailable) as info:
        load_fanout("compiled")
    message = str(info.value)
    assert "rtserver._fanout cannot be imported" in message
    assert BUILD_HINT in message
    assert "python setup.py build_ext --inplace" in message
    assert "Required action" in message
    assert isinstance(info.value.__cause__, ImportError)
