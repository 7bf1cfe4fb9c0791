"""Fuzz targets: bytes in, an invariant checked, only the documented failures allowed.

Shared by the hypothesis tests (``test_fuzz.py``, run in CI for a bounded time from
the committed corpus) and the optional atheris entry point (``atheris_main.py``).
Each target raises ``AssertionError`` (or lets an unexpected exception escape) when
an invariant breaks; anything else is a pass.
"""

from __future__ import annotations

import uuid
from functools import cache
from pathlib import Path

import msgspec
import orjson

from rtserver import fanout_reference
from rtserver.auth import AccessPolicy, Principal, TokenError, TokenVerifier
from rtserver.bus import wire
from rtserver.bus.local import LocalBus
from rtserver.config import Config, load_config
from rtserver.domains.insurance.ingress_kinds import INSURANCE_KINDS
from rtserver.fanout import load_fanout
from rtserver.ingress.payloads import CORE_KINDS, IngressDecoder, IngressInvalid, IngressMessage
from rtserver.protocol.codec import INT64_MAX, INT64_MIN, Codec, DecodeFailure
from rtserver.protocol.messages import Error
from rtserver.protocol.session import (
    Authenticate,
    CloseConnection,
    Dispatch,
    DoPresence,
    DoPublish,
    DoSubscribe,
    DoUnsubscribe,
    Fail,
    Reply,
    Session,
)

__all__ = ["CORPUS", "KNOWN_ISSUES", "SECRET", "TARGETS", "load_corpus", "run"]

SECRET = "fuzz-secret-0123456789abcdef-0123456789abcdef"
CORPUS = Path(__file__).with_name("corpus")
MAX_DEPTH = 32
LOG_INTERVAL = 3600.0
#: Error codes a decode may answer with (docs/protocol.md).
DECODE_CODES = frozenset({
    "invalid_json", "invalid_message", "unknown_type", "missing_field", "invalid_field",
    "unknown_field", "nesting_too_deep", "number_out_of_range"})
TOKEN_CODES = frozenset({"token_missing", "token_invalid", "token_expired"})


@cache
def _config() -> Config:
    return load_config(env={}, flags={"jwt_secret": SECRET})


@cache
def _codec() -> Codec:
    """The codec of a node with the insurance domain (core and domain messages)."""
    from rtserver.domains.insurance import InsuranceDomain
    from rtserver.node import Node

    node = Node(_config(), LocalBus.from_config(_config().bus),
                load_fanout("python"), [InsuranceDomain], 0, SECRET)
    return node.codec


@cache
def _verifier() -> TokenVerifier:
    return TokenVerifier(_config().auth, SECRET)


def load_corpus(target: str) -> list[bytes]:
    """The committed seed inputs of ``target`` (``tests/fuzz/corpus/<target>/*``)."""
    folder = CORPUS / target
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def _check_failure(exc: DecodeFailure) -> None:
    assert exc.code in DECODE_CODES, exc.code
    assert exc.action.startswith("Required action"), exc.action
    # What the node does with it: an error frame and a JSON log line.
    _codec().encode(Error(code=exc.code, message=exc.message, action=exc.action, id=exc.msg_id))
    orjson.dumps({"code": exc.code, "message": exc.message, "id": exc.msg_id})


def _ints_in_range(value: object) -> bool:
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, msgspec.Struct):
        return all(_ints_in_range(v) for v in msgspec.structs.astuple(value))
    if isinstance(value, (list, tuple)):
        return all(_ints_in_range(v) for v in value)
    if isinstance(value, dict):
        return all(_ints_in_range(k) and _ints_in_range(v) for k, v in value.items())
    return True


def frame_decoder(data: bytes) -> None:
    """A client text frame (valid UTF-8, as websockets delivers it) through the codec."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # websockets closes such a frame with 1007 before the codec sees it
    try:
        message = _codec().decode(text, MAX_DEPTH, LOG_INTERVAL)
    except DecodeFailure as exc:
        _check_failure(exc)
        return
    assert _ints_in_range(message), message
    msgspec.json.encode(message)


def session(data: bytes) -> None:
    """A sequence of frames (split on NUL; a leading 0x01 makes a frame binary) through a
    session that authenticated first when the input starts with ``A``."""
    config = _config()
    s = Session("fuzz", _codec(), _verifier(),
                AccessPolicy(config.namespaces, config.limits.max_room_name_length),
                config.limits, 0.0, set(), {})
    if data.startswith(b"A"):
        s.set_principal(Principal(user=str(uuid.UUID(int=1)), permissions=frozenset(
            {"publish", "quote:read", "quote:write"}), grants=("bench:*", "quote:*"),
            anonymous=False, expires_at=None))
    closed = False
    for i, chunk in enumerate(data.split(b"\x00")):
        frame: str | bytes
        if chunk.startswith(b"\x01"):
            frame = chunk[1:]
        else:
            try:
                frame = chunk.decode("utf-8")
            except UnicodeDecodeError:
                continue
        actions = s.on_frame(frame, float(i) * 0.001)
        if closed:
            assert actions == [], actions
        for action in actions:
            match action:
                case Fail(code=code, message=message, action=todo, id=msg_id):
                    assert todo.startswith("Required action"), todo
                    _codec().encode(Error(code=code, message=message, action=todo, id=msg_id))
                    orjson.dumps({"code": code, "message": message, "id": msg_id})
                case CloseConnection(code=code):
                    assert code in (1008, 4001), code
                    closed = True
                case Reply(message=message):
                    _codec().encode(message)
                case DoPublish(data=payload):
                    orjson.loads(payload)  # publish data is valid JSON
                case Authenticate() | DoSubscribe() | DoUnsubscribe() | DoPresence() | Dispatch():
                    pass
                case _:
                    raise AssertionError(f"unknown action {action!r}")
        assert s.closed == closed


def token(data: bytes) -> None:
    """Token text through the verifier: a principal or a TokenError with a known code."""
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        principal = _verifier().verify(text, now=1_900_000_000.0)
    except TokenError as exc:
        assert exc.code in TOKEN_CODES, exc.code
        assert exc.action.startswith("Required action")
        orjson.dumps({"message": exc.message})
        return
    assert principal.user is not None and not principal.anonymous
    # One spelling per token: any padded variant is refused.
    try:
        _verifier().verify(text + "=", now=1_900_000_000.0)
    except TokenError:
        pass
    else:
        raise AssertionError("a padded spelling of a valid token was accepted")


def bus_wire(data: bytes) -> None:
    """A byte stream, fed in two pieces, through the bus frame reader."""
    cut = data[0] % (len(data) or 1) if data else 0
    reader = wire.FrameReader()
    try:
        frames = reader.feed(data[:cut]) + reader.feed(data[cut:])
    except wire.FrameError:
        return
    for f in frames:
        again = wire.encode(f.kind, f.req, f.seq, f.key, f.payload)
        [back] = wire.FrameReader().feed(again)
        assert (back.kind, back.req, back.seq, back.key, back.payload) == (
            f.kind, f.req, f.seq, f.key, f.payload)
    assert reader.pending() <= len(data)


#: The kinds a server with the insurance domain accepts.
INGRESS_DECODER = IngressDecoder((*CORE_KINDS, *INSURANCE_KINDS))


def ingress(data: bytes) -> None:
    """A backend payload through the ingress decoder: a message or IngressInvalid."""
    try:
        message = INGRESS_DECODER.decode(data)
    except IngressInvalid as exc:
        assert exc.kind in ("not_json", "schema")
        return
    assert isinstance(message, IngressMessage) and type(message) in INGRESS_DECODER.kinds


def fanout_framing(data: bytes) -> None:
    """The compiled text framing equals the reference for the payload."""
    from rtserver.fanout import load_fanout

    compiled = load_fanout("compiled")
    assert compiled.frame_text(data) == fanout_reference.frame_text(data)


#: Crashes found by fuzzing in modules this harness does not own, each with an
#: xfail(strict=True) regression test in test_regressions.py: target ->
#: (exception type, message fragment). ``run`` reports them as known, so the fuzz
#: run keeps looking for new ones; once the owner fixes one, its regression test
#: passes unexpectedly (strict: a failure) and the entry must be removed here.
KNOWN_ISSUES: dict[str, list[tuple[type[BaseException], str]]] = {
}


def run(target: str, data: bytes) -> None:
    """Run ``target`` on ``data``; a known issue (see :data:`KNOWN_ISSUES`) is tolerated."""
    try:
        TARGETS[target](data)
    except AssertionError:
        raise
    except Exception as exc:
        for kind, fragment in KNOWN_ISSUES.get(target, []):
            if isinstance(exc, kind) and fragment in str(exc):
                return
        raise


#: target name (corpus folder) -> function
TARGETS = {
    "frame_decoder": frame_decoder,
    "session": session,
    "token": token,
    "bus_wire": bus_wire,
    "ingress": ingress,
    "fanout_framing": fanout_framing,
}
