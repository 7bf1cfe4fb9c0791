"""Ingress payloads: the message base, the core kind, and the decoder of the enabled kinds.

A backend sends one JSON object per message, tagged on ``type``; unknown types
and unknown fields are rejected. The core knows one kind::

    {"type": "room_publish", "room": "quote:…", "data": {...}}

Every other kind belongs to a domain, which registers its Struct (derived
from :class:`IngressMessage`) and handler with ``router.register_ingress``;
the insurance domain's kinds are in ``rtserver/domains/insurance/ingress_kinds.py``
(``user_notify``, ``quote_update``, ``calculation_progress``, ``analytics_event``,
``alert``). :class:`IngressDecoder` is built once per node from the core kind
plus the registered ones, so a payload of a kind no enabled domain handles is
refused as invalid (counted, logged), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union

import msgspec

__all__ = [
    "CORE_KINDS",
    "NOTIFY_PAYLOAD_MAX",
    "EmptyObject",
    "IngressDecoder",
    "IngressInvalid",
    "IngressMessage",
    "IngressPayloadTooLarge",
    "NonEmpty",
    "RoomPublish",
    "encode_ingress",
]

NOTIFY_PAYLOAD_MAX = 7999
"""Largest NOTIFY payload PostgreSQL accepts, in bytes (it must be shorter than 8000)."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
#: The default ``data`` of kinds whose data is optional: an empty JSON object.
EmptyObject = msgspec.Raw(b"{}")


class IngressInvalid(ValueError):
    """An ingress payload is not valid JSON or does not match any enabled ingress kind.

    ``kind`` is ``not_json`` or ``schema`` (the label of ``rtserver_ingress_invalid_total``).
    """

    def __init__(self, message: str, kind: Literal["not_json", "schema"]) -> None:
        super().__init__(message)
        self.kind = kind


class IngressPayloadTooLarge(ValueError):
    """An ingress payload exceeds the NOTIFY limit."""


class IngressMessage(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    """Base of every ingress message; subclasses set ``tag``."""


class RoomPublish(IngressMessage, tag="room_publish", frozen=True):
    """Publish ``data`` (any JSON, passed through untouched) to ``room``.

    ``key`` (optional, recommended): the bus applies a ``(room, key)`` once within
    ``bus.idempotency_window``, so a payload handled again after a consumer
    crash (the Redis ingress is at-least-once) reaches clients once.
    """

    room: NonEmpty
    data: msgspec.Raw
    key: str | None = None


#: The kinds the core handles itself.
CORE_KINDS: tuple[type[IngressMessage], ...] = (RoomPublish,)


class IngressDecoder:
    """Decodes and validates payloads of ``kinds`` (one msgspec decoder, built once)."""

    def __init__(self, kinds: Iterable[type[Any]]) -> None:
        self.kinds = tuple(dict.fromkeys(kinds))
        union: Any = Union[self.kinds]  # noqa: UP007 - a runtime union of the kinds
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union)

    def decode(self, payload: bytes | str) -> IngressMessage:
        """One payload as its Struct; raises :class:`IngressInvalid` with the reason."""
        try:
            message: IngressMessage = self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise IngressInvalid(f"invalid ingress payload: {exc}", "schema") from exc
        except msgspec.DecodeError as exc:
            raise IngressInvalid(f"ingress payload is not JSON: {exc}", "not_json") from exc
        except RecursionError as exc:
            raise IngressInvalid("ingress payload is nested too deeply", "schema") from exc
        return message

    def check_notify(self, payload: bytes) -> IngressMessage:
        """:meth:`decode`, after refusing a payload too large for ``NOTIFY``."""
        if len(payload) > NOTIFY_PAYLOAD_MAX:
            raise IngressPayloadTooLarge(
                f"ingress payload is {len(payload)} bytes, PostgreSQL NOTIFY accepts at most "
                f"{NOTIFY_PAYLOAD_MAX}. Required action: store large data in the database and "
                "send its id")
        return self.decode(payload)


def encode_ingress(message: IngressMessage) -> bytes:
    """The JSON payload of ``message`` (e.g. ``RoomPublish(room, msgspec.Raw(data))``)."""
    return msgspec.json.encode(message)
