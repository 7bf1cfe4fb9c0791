"""Decoding client frames and encoding server messages (no I/O).

One :class:`Codec` is built once per process from the core client messages
plus every message type domain handlers registered on the router; it owns
the one msgspec decoder for that union and one reused encoder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from rtserver.protocol.messages import CLIENT_MESSAGES, ClientMessage, ServerMessage

__all__ = ["Codec", "DecodeFailure", "ErrorCode"]


class ErrorCode:
    """Stable error codes sent in ``error`` frames (documented in docs/protocol.md)."""

    INVALID_JSON = "invalid_json"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
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

    def encode(self, message: ServerMessage) -> bytes:
        """Encode a server message to JSON bytes."""
        return self._encoder.encode(message)

    def decode(self, frame: str | bytes) -> ClientMessage:
        """Decode and validate one client text frame or raise :class:`DecodeFailure`."""
        try:
            message: ClientMessage = self._decoder.decode(frame)
            return message
        except msgspec.ValidationError as exc:
            raise self._classify(str(exc), frame) from exc
        except msgspec.DecodeError as exc:
            raise DecodeFailure(
                ErrorCode.INVALID_JSON, f"the frame is not valid JSON: {exc}",
                "Required action: send one JSON object per text frame", None,
            ) from exc

    def _probe_id(self, frame: str | bytes) -> str | int | None:
        try:
            obj = self._id_probe.decode(frame)
        except msgspec.MsgspecError:
            return None
        value = obj.get("id")
        return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None

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
