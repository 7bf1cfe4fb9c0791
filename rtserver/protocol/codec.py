"""Decoding client frames and encoding server messages (no I/O).

One :class:`Codec` is built once per process from the core client messages
plus every message type domain handlers registered on the router; it owns
the one msgspec decoder for that union and one reused encoder.
"""

from __future__ import annotations

import itertools
import operator
import re
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from rtserver.jsonlog import SummaryLog, get_logger
from rtserver.protocol.messages import CLIENT_MESSAGES, ClientMessage, ServerMessage

__all__ = ["INT64_MAX", "INT64_MIN", "Codec", "DecodeFailure", "ErrorCode", "json_too_deep"]

log = get_logger("rtserver.protocol")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class ErrorCode:
    """Stable error codes sent in ``error`` frames (documented in docs/protocol.md)."""

    INVALID_JSON = "invalid_json"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NESTING_TOO_DEEP = "nesting_too_deep"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_ROOM = "invalid_room"
    UNKNOWN_NAMESPACE = "unknown_namespace"
    FORBIDDEN = "forbidden"
    NOT_SUBSCRIBED = "not_subscribed"
    ALREADY_SUBSCRIBED = "already_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    PRESENCE_DISABLED = "presence_disabled"
    RATE_LIMITED = "rate_limited"
    AUTH_REQUIRED = "auth_required"
    ALREADY_AUTHENTICATED = "already_authenticated"
    TOKEN_MISSING = "token_missing"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    AUTH_TIMEOUT = "auth_timeout"
    TOO_MANY_ERRORS = "too_many_errors"
    TOO_MANY_USER_CONNECTIONS = "too_many_user_connections"
    BUS_UNAVAILABLE = "bus_unavailable"
    FEATURE_UNAVAILABLE = "feature_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


class DecodeFailure(Exception):
    """A client frame could not be decoded into a message."""

    def __init__(self, code: str, message: str, action: str, msg_id: str | int | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action
        self.msg_id = msg_id


_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$(.*)`)?")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_BAD_TAG = re.compile(r"Invalid value '([^']*)' - at `\$\.type`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")
# JSON strings (unrolled form: linear on valid JSON).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
# Brackets to parentheses (valid JSON pairs them correctly), everything else deleted.
_PAREN_TABLE = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_OPEN_RUNS = re.compile(rb"\(+")
_CLOSE_RUNS = re.compile(rb"\)+")
#: Leaf-pair removal passes before the run-length scan (each pass is one C replace).
_LEAF_PASSES = 4
_LONG_DIGITS = re.compile(r"[0-9]{19}")


def json_too_deep(frame: str, max_depth: int) -> bool:
    """Whether arrays/objects in ``frame`` (syntactically valid JSON) nest deeper than
    ``max_depth``.

    Ordinary frames cost two C-level counts (fewer brackets than the limit
    cannot nest deeper than it). Otherwise, all in C but the last step:
    strings are removed, brackets become parentheses and everything else is
    deleted; a few passes strip the innermost ``()`` pairs (one level each);
    the depth of what is left is the largest prefix sum over its runs of
    ``(`` and ``)``. About 2 ms for the worst 64 KiB frame. Check the syntax
    first: the string pattern is quadratic on many unterminated strings.
    """
    if frame.count("[") + frame.count("{") <= max_depth:
        return False
    if '"' in frame:
        frame = _STRING.sub("", frame)
    parens = frame.encode().translate(_PAREN_TABLE, _NOT_BRACKET)
    removed = 0
    while removed < _LEAF_PASSES:
        shorter = parens.replace(b"()", b"")
        if shorter == parens:
            break
        parens = shorter
        removed += 1
        if not parens:
            return removed > max_depth
    opens: Iterable[int] = map(len, _OPEN_RUNS.findall(parens))
    if parens.startswith(b")"):
        opens = itertools.chain((0,), opens)
    closes = itertools.chain((0,), map(len, _CLOSE_RUNS.findall(parens)))
    deepest = max(map(operator.sub, itertools.accumulate(opens), itertools.accumulate(closes)),
                  default=0)
    return deepest + removed > max_depth


def _out_of_range_int(value: Any) -> bool:
    """Whether a decoded value holds an integer outside the signed 64-bit range."""
    if isinstance(value, int):
        return not INT64_MIN <= value <= INT64_MAX
    if isinstance(value, msgspec.Struct):
        return any(_out_of_range_int(v) for v in msgspec.structs.astuple(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_out_of_range_int(v) for v in value)
    if isinstance(value, dict):
        return any(_out_of_range_int(k) or _out_of_range_int(v) for k, v in value.items())
    return False


class Codec:
    """The client-message decoder and the server-message encoder."""

    def __init__(self, extra_messages: Iterable[type[ClientMessage]] = ()) -> None:
        types = (*CLIENT_MESSAGES, *extra_messages)
        tags = [t.__struct_config__.tag for t in types]
        if len(set(tags)) != len(tags):
            raise ValueError(f"duplicate client message types: {tags}")
        self.types: tuple[type[ClientMessage], ...] = types
        self.tags: tuple[str, ...] = tuple(str(t) for t in tags)
        union: Any = types[0]
        for t in types[1:]:
            union = union | t
        self._decoder = msgspec.json.Decoder(union)
        self._encoder = msgspec.json.Encoder()
        self._id_probe = msgspec.json.Decoder(dict[str, Any])
        self._syntax = msgspec.json.Decoder(msgspec.Raw)
        #: Decode failures, logged as one warning summary per interval (per node).
        self.failures = SummaryLog(log, "client_decode_failures")

    def encode(self, message: ServerMessage) -> bytes:
        """Encode a server message to JSON bytes."""
        return self._encoder.encode(message)

    def decode(self, frame: str, max_depth: int, log_interval: float) -> ClientMessage:
        """Decode and validate one client text frame or raise :class:`DecodeFailure`.

        Frames nested deeper than ``max_depth`` (``limits.max_json_depth``) and
        integers outside the signed 64-bit range are refused before they reach
        the decoder's stack or a log line; every failure is counted in the
        warning summary written at most once per ``log_interval`` seconds.
        """
        try:
            return self._decode(frame, max_depth)
        except DecodeFailure as exc:
            self.failures.note(exc.code, time.monotonic(), log_interval)
            raise

    def _decode(self, frame: str, max_depth: int) -> ClientMessage:
        if frame.count("[") + frame.count("{") > max_depth:
            # Syntax first (C, linear; a RecursionError means far too deep), then
            # the depth scan, which is linear on valid JSON only.
            try:
                self._syntax.decode(frame)
            except msgspec.DecodeError as exc:
                raise DecodeFailure(
                    ErrorCode.INVALID_JSON, f"the frame is not valid JSON: {exc}",
                    "Required action: send one JSON object per text frame", None,
                ) from exc
            except RecursionError:
                too_deep = True
            else:
                too_deep = json_too_deep(frame, max_depth)
            if too_deep:
                raise DecodeFailure(
                    ErrorCode.NESTING_TOO_DEEP,
                    f"the frame nests arrays/objects deeper than {max_depth} levels",
                    f"Required action: send messages nested at most {max_depth} levels deep "
                    "(limits.max_json_depth)", None)
        try:
            message: ClientMessage = self._decoder.decode(frame)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if "got `float`" in text and _LONG_DIGITS.search(frame) is not None:
                # Older msgspec reads an integer beyond 64 bits as a float.
                raise self._out_of_range() from exc
            raise self._classify(text, frame) from exc
        except msgspec.DecodeError as exc:
            raise DecodeFailure(
                ErrorCode.INVALID_JSON, f"the frame is not valid JSON: {exc}",
                "Required action: send one JSON object per text frame", None,
            ) from exc
        except RecursionError as exc:
            # Only reachable if the stack is already deep: the depth check above
            # bounds nesting well below Python's recursion limit.
            raise DecodeFailure(
                ErrorCode.NESTING_TOO_DEEP, "the frame nests arrays/objects too deeply",
                f"Required action: send messages nested at most {max_depth} levels deep "
                "(limits.max_json_depth)", None) from exc
        if _LONG_DIGITS.search(frame) is not None and _out_of_range_int(message):
            msg_id = getattr(message, "id", None)
            raise self._out_of_range(msg_id if isinstance(msg_id, str) else None)
        return message

    @staticmethod
    def _out_of_range(msg_id: str | None = None) -> DecodeFailure:
        return DecodeFailure(
            ErrorCode.NUMBER_OUT_OF_RANGE,
            "an integer in the message is outside the signed 64-bit range",
            "Required action: send integers between -2^63 and 2^63-1 (ids: prefer strings)",
            msg_id)

    def _probe_id(self, frame: str | bytes) -> str | int | None:
        try:
            obj = self._id_probe.decode(frame)
        except (msgspec.MsgspecError, RecursionError):
            return None
        value = obj.get("id")
        if isinstance(value, bool) or (isinstance(value, int)
                                       and not INT64_MIN <= value <= INT64_MAX):
            return None
        return value if isinstance(value, (str, int)) else None

    def _classify(self, text: str, frame: str | bytes) -> DecodeFailure:
        msg_id = self._probe_id(frame)
        if (m := _MISSING.match(text)) is not None:
            field = m.group(1)
            if field == "type":
                return DecodeFailure(
                    ErrorCode.MISSING_FIELD, "the message has no field `type`",
                    f"Required action: include type (one of {', '.join(self.tags)})", msg_id)
            return DecodeFailure(
                ErrorCode.MISSING_FIELD, f"the message is missing required field `{field}`",
                f"Required action: include {field} in this message", msg_id)
        if (m := _UNKNOWN.match(text)) is not None:
            field = m.group(1)
            return DecodeFailure(
                ErrorCode.UNKNOWN_FIELD, f"the message has unknown field `{field}`",
                f"Required action: remove {field}; see docs/protocol.md for the message's fields",
                msg_id)
        if (m := _BAD_TAG.match(text)) is not None:
            return DecodeFailure(
                ErrorCode.UNKNOWN_TYPE, f"unknown message type {m.group(1)!r}",
                f"Required action: use one of {', '.join(self.tags)}", msg_id)
        if text.startswith("Expected `object`"):
            return DecodeFailure(
                ErrorCode.INVALID_MESSAGE, "the frame is JSON but not an object",
                "Required action: send a JSON object with a type field", msg_id)
        at = _AT.search(text)
        field = at.group(1) if at else "?"
        if field == "type":
            return DecodeFailure(
                ErrorCode.UNKNOWN_TYPE, f"field `type` is invalid: {text}",
                f"Required action: use one of {', '.join(self.tags)}", msg_id)
        return DecodeFailure(
            ErrorCode.INVALID_FIELD, f"field `{field}` is invalid: {text.split(' - at ')[0]}",
            f"Required action: send {field} with the type given in docs/protocol.md", msg_id)
