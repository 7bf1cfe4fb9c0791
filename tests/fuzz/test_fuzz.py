"""Hypothesis fuzzing of every input parser a peer can reach, bounded for CI.

Each target (``targets.py``) runs on its committed corpus (``corpus/<target>/*``,
fed as explicit examples) and then on generated inputs: random bytes plus
structure-aware inputs (JSON messages of the known types, signed tokens with
random claims, well-formed bus frames cut and corrupted). ``RTSERVER_FUZZ_EXAMPLES``
sets the generated inputs per target (default 1500: about a minute for all targets
on a CI machine); raise it for a longer local run. atheris (coverage-guided) can
run the same targets: see ``atheris_main.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtserver.bus import wire
from rtserver.protocol.codec import json_too_deep
from tests.fuzz.targets import SECRET, load_corpus, run

EXAMPLES = int(os.environ.get("RTSERVER_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
NOW = 1_900_000_000

_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=30)

_CLIENT_TYPES = ["auth", "ping", "subscribe", "unsubscribe", "publish", "presence",
                 "quote_edit", "quote_subscribe", "notifications_list", "notification_read",
                 "start_monitoring", "analytics_subscribe", "alerts_list", "nope"]
_FIELDS = ["id", "room", "data", "token", "quote_id", "field", "value", "limit", "filters",
           "update_interval", "dashboard", "notification_id", "x"]


def _message(types: list[str]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda t, fields: json.dumps({"type": t, **fields}).encode(),
        st.sampled_from(types),
        st.dictionaries(st.sampled_from(_FIELDS), _json_values, max_size=4))


def _deep(n: int, inner: str = "1") -> bytes:
    return ("[" * n + inner + "]" * n).encode()


_frames = st.one_of(
    st.binary(max_size=512),
    _message(_CLIENT_TYPES),
    st.builds(lambda n: b'{"type":"publish","room":"bench:r","data":' + _deep(n) + b"}",
              st.integers(0, 3000)),
    st.builds(lambda d: b'{"type":"ping","id":' + str(d).encode() + b"}",
              st.integers(-(10**40), 10**40) | st.floats()),
)


def with_corpus(target: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Feed every committed seed of ``target`` as an explicit example."""
    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for data in load_corpus(target):
            test = example(data)(test)
        return test
    return decorate


@FUZZ
@with_corpus("frame_decoder")
@given(_frames)
def test_fuzz_frame_decoder(data: bytes) -> None:
    run("frame_decoder", data)


@FUZZ
@with_corpus("session")
@given(st.builds(lambda auth, frames: (b"A" if auth else b"") + b"\x00".join(frames),
                 st.booleans(), st.lists(_frames, max_size=12)))
def test_fuzz_session(data: bytes) -> None:
    run("session", data)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}".encode()


_claim_values = st.one_of(
    st.integers(NOW - 10**6, NOW + 10**6), st.floats(), st.text(max_size=40), st.none(),
    st.lists(st.text(max_size=10), max_size=3), st.just("00000000-0000-0000-0000-000000000001"))
_tokens = st.one_of(
    st.binary(max_size=300),
    st.text(alphabet="ABCabc012-_.=+/ ", max_size=120).map(str.encode),
    st.builds(_signed,
              st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "RS256"])},
                                    optional={"typ": st.sampled_from(["JWT", "x"]),
                                              "crit": st.lists(st.text(max_size=5))}),
              st.dictionaries(st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "iss",
                                               "perms", "rooms", "jti"]), _claim_values)),
)


@FUZZ
@with_corpus("token")
@given(_tokens)
def test_fuzz_token(data: bytes) -> None:
    run("token", data)


_wire_frames = st.builds(
    lambda kind, req, seq, key, payload: wire.encode(kind, req, seq, key, payload),
    st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.text(max_size=20), st.binary(max_size=64))


def _corrupt(stream: bytes, pos: int, byte: int) -> bytes:
    if not stream:
        return stream
    i = pos % len(stream)
    return stream[:i] + bytes([byte]) + stream[i + 1:]


_bus_streams = st.one_of(
    st.binary(max_size=256),
    st.lists(_wire_frames, max_size=5).map(b"".join),
    st.builds(_corrupt, st.lists(_wire_frames, min_size=1, max_size=4).map(b"".join),
              st.integers(0, 10**6), st.integers(0, 255)),
)


@FUZZ
@with_corpus("bus_wire")
@given(_bus_streams)
def test_fuzz_bus_wire(data: bytes) -> None:
    run("bus_wire", data)


_INGRESS_TYPES = ["room_publish", "user_notify", "quote_update", "calculation_progress",
                  "analytics_event", "alert", "nope"]
_INGRESS_FIELDS = ["room", "data", "user", "title", "body", "notification_id", "quote_id",
                   "update_type", "version", "progress", "stage", "event", "alert_type",
                   "severity", "message", "details"]
_ingress = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda t, fields: json.dumps({"type": t, **fields}).encode(),
              st.sampled_from(_INGRESS_TYPES),
              st.dictionaries(st.sampled_from(_INGRESS_FIELDS), _json_values, max_size=5)),
)


@FUZZ
@with_corpus("ingress")
@given(_ingress)
def test_fuzz_ingress(data: bytes) -> None:
    run("ingress", data)


@FUZZ
@with_corpus("fanout_framing")
@given(st.binary(max_size=70_000))
def test_fanout_framing_equals_reference(data: bytes) -> None:
    run("fanout_framing", data)


def _reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    return 0


@FUZZ
@given(_json_values, st.integers(1, 8))
def test_depth_check_matches_reference(value: Any, limit: int) -> None:
    text = json.dumps(value)
    assert json_too_deep(text, limit) == (_reference_depth(value) > limit)
