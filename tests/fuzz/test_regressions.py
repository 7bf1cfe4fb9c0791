"""Every crash fuzzing found, as a regression test.

Crashes in modules the security work owns are fixed and tested here. Crashes in
other modules are ``xfail(strict=True)`` with the required fix: when the owner
fixes one, the test passes unexpectedly, which fails the run until the marker and
the matching ``KNOWN_ISSUES`` entry of ``targets.py`` are removed.
"""

from __future__ import annotations

import pytest

from rtserver.bus import wire
from rtserver.ingress.payloads import IngressInvalid
from rtserver.protocol.codec import DecodeFailure
from tests.fuzz.targets import INGRESS_DECODER, KNOWN_ISSUES, LOG_INTERVAL, MAX_DEPTH, _codec


@pytest.mark.parametrize(("frame", "code"), [
    # RecursionError in the decoder: close 1011 and an error-level traceback before.
    ('{"type":"publish","room":"bench:r","data":' + "[" * 1000 + "]" * 1000 + "}",
     "nesting_too_deep"),
    ('{"type":"subscribe","room":' + '{"a":' * 2000 + "1" + "}" * 2000 + "}",
     "nesting_too_deep"),
    ('{"type":"publish","room":"bench:r","data":' + "[" * 5000, "nesting_too_deep"),
    # Many unterminated strings after enough brackets: the depth scan's string pattern
    # is quadratic on such input (~20 s for 64 KiB), so the syntax is checked first.
    ("[" * 40 + '\\"' * 32000, "invalid_json"),
    # An integer beyond 64 bits was accepted, then broke the JSON log line (orjson).
    ('{"type":"ping","id":' + "1" * 500 + "}", "number_out_of_range"),
    ('{"type":"ping","id":-9223372036854775809}', "number_out_of_range"),
])
def test_codec_regressions(frame: str, code: str) -> None:
    with pytest.raises(DecodeFailure) as info:
        _codec().decode(frame, MAX_DEPTH, LOG_INTERVAL)
    assert info.value.code == code


def test_huge_int_in_log_fields_is_written_not_raised() -> None:
    import io
    import sys

    import orjson

    from rtserver import jsonlog

    out = io.StringIO()
    jsonlog.configure("info", stream=out)
    try:
        jsonlog.get_logger("fuzz").warning("odd", value=10**30, text="\udc80")
    finally:
        jsonlog.configure("info", stream=sys.stderr)
    line = orjson.loads(out.getvalue())
    assert line["event"] == "odd" and line["value"] == str(10**30)
    assert "64-bit" in line["log_encoding_error"]


def test_bus_frame_with_invalid_utf8_key_is_a_frame_error() -> None:
    """Found by fuzzing: a key that is not UTF-8 raised UnicodeDecodeError."""
    stream = b"\x00\x00\x00\x11\x22" + b"\x00" * 12 + b"\x00\x02\xc3\x28"
    with pytest.raises(wire.FrameError):
        wire.FrameReader().feed(stream)


def test_deep_ingress_payload_is_invalid() -> None:
    """Found by fuzzing: deeply nested data let RecursionError escape the ingress decoder."""
    payload = b'{"type":"room_publish","room":"quote:q","data":' + b"[" * 5000 + b"}"
    with pytest.raises(IngressInvalid):
        INGRESS_DECODER.decode(payload)


def test_known_issues_each_have_a_regression_test() -> None:
    assert not KNOWN_ISSUES, "every crash found is fixed: a known issue needs its regression test"
