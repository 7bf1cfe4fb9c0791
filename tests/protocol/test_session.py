"""The sans-I/O session: frames in, actions out. No sockets."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from rtserver.auth import AccessPolicy, TokenVerifier, mint_token
from rtserver.config import load_config
from rtserver.protocol.codec import Codec
from rtserver.protocol.messages import Pong
from rtserver.protocol.session import (
    Authenticate,
    CloseConnection,
    DoPresence,
    DoPublish,
    DoSubscribe,
    DoUnsubscribe,
    Fail,
    Reply,
    Session,
)

SECRET = "session-test-secret-0123456789abcdef-0123"


def make_session(**limits: object) -> Session:
    config = load_config(env={}, flags={"jwt_secret": SECRET})
    lim = msgspec.structs.replace(config.limits, **limits)
    return Session("c1", Codec(), TokenVerifier(config.auth, SECRET),
                   AccessPolicy(config.namespaces, lim.max_room_name_length), lim, 0.0, set(), {})


def authed(perms: list[str], rooms: list[str], **limits: object) -> Session:
    s = make_session(**limits)
    tok = mint_token(SECRET, str(uuid.uuid4()), perms, rooms, 60)
    [action] = s.on_frame(f'{{"type":"auth","token":"{tok}"}}', 0.0)
    assert isinstance(action, Authenticate)
    s.principal = action.principal
    return s


def codes(actions: list[object]) -> list[str]:
    return [a.code for a in actions if isinstance(a, Fail)]


def test_ping_before_auth_is_answered() -> None:
    [reply] = make_session().on_frame('{"type":"ping","id":7}', 0.0)
    assert isinstance(reply, Reply) and isinstance(reply.message, Pong)
    assert reply.message.id == 7


def test_messages_before_auth_need_auth() -> None:
    assert codes(make_session().on_frame('{"type":"subscribe","room":"bench:a"}', 0.0)) == [
        "auth_required"]


@pytest.mark.parametrize(("frame", "code"), [
    ("{bad", "invalid_json"),
    ("[1,2]", "invalid_message"),
    ('{"room":"bench:a"}', "missing_field"),
    ('{"type":"nope"}', "unknown_type"),
    ('{"type":"unsubscribe"}', "missing_field"),
    ('{"type":"subscribe","room":5}', "invalid_field"),
    ('{"type":"subscribe","room":"bench:a","extra":1}', "unknown_field"),
    ('{"type":"subscribe","room":"no-colon"}', "invalid_room"),
    ('{"type":"subscribe","room":"bench:bad key"}', "invalid_room"),
    ('{"type":"subscribe","room":"bench:' + "x" * 200 + '"}', "invalid_room"),
    ('{"type":"subscribe","room":"other:a"}', "unknown_namespace"),
    ('{"type":"publish","room":"bench:a"}', "missing_field"),
])
def test_bad_input_codes(frame: str, code: str) -> None:
    s = authed(["publish"], ["bench:*"])
    assert codes(s.on_frame(frame, 1.0)) == [code]


def test_binary_frame_rejected() -> None:
    s = authed([], [])
    assert codes(s.on_frame(b'{"type":"ping"}', 1.0)) == ["binary_not_supported"]


def test_error_names_field_and_echoes_id() -> None:
    s = authed([], ["bench:*"])
    [fail] = s.on_frame('{"type":"subscribe","room":1,"id":"abc"}', 1.0)
    assert isinstance(fail, Fail)
    assert "room" in fail.message and fail.id == "abc" and fail.action.startswith("Required action")


def test_subscribe_unsubscribe_publish_presence_actions() -> None:
    s = authed(["publish", "quote:read"], ["bench:*", "quote:q1"])
    [sub] = s.on_frame('{"type":"subscribe","room":"bench:a","id":1}', 1.0)
    assert isinstance(sub, DoSubscribe) and sub.room == "bench:a" and sub.id == 1
    s.rooms.add("bench:a")
    assert codes(s.on_frame('{"type":"subscribe","room":"bench:a"}', 1.0)) == [
        "already_subscribed"]
    [pub] = s.on_frame('{"type":"publish","room":"bench:a","data":{"k":[1,"x"]}}', 1.0)
    assert isinstance(pub, DoPublish) and pub.data == b'{"k":[1,"x"]}'
    assert codes(s.on_frame('{"type":"presence","room":"bench:a"}', 1.0)) == [
        "presence_disabled"]
    assert codes(s.on_frame('{"type":"presence","room":"quote:q1"}', 1.0)) == ["not_subscribed"]
    s.rooms.add("quote:q1")
    [pres] = s.on_frame('{"type":"presence","room":"quote:q1"}', 1.0)
    assert isinstance(pres, DoPresence)
    [unsub] = s.on_frame('{"type":"unsubscribe","room":"bench:a"}', 1.0)
    assert isinstance(unsub, DoUnsubscribe)
    assert codes(s.on_frame('{"type":"unsubscribe","room":"bench:zzz"}', 1.0)) == [
        "not_subscribed"]


@pytest.mark.parametrize(("perms", "grants", "frame", "allowed"), [
    ([], ["bench:*"], '{"type":"subscribe","room":"bench:a"}', True),
    ([], ["bench:b"], '{"type":"subscribe","room":"bench:a"}', False),
    ([], ["bench:*"], '{"type":"publish","room":"bench:a","data":1}', False),
    (["publish"], ["bench:*"], '{"type":"publish","room":"bench:a","data":1}', True),
    (["quote:read"], ["quote:*"], '{"type":"subscribe","room":"quote:q"}', True),
    (["quote:read"], [], '{"type":"subscribe","room":"quote:q"}', False),
    ([], ["quote:*"], '{"type":"subscribe","room":"quote:q"}', False),
    (["quote:write"], ["quote:q"], '{"type":"publish","room":"quote:q","data":1}', True),
    (["analytics:read"], [], '{"type":"subscribe","room":"analytics:quotes"}', True),
    ([], ["analytics:*"], '{"type":"subscribe","room":"analytics:quotes"}', False),
    (["analytics:read"], [], '{"type":"publish","room":"analytics:quotes","data":1}', False),
    (["admin:monitor"], [], '{"type":"subscribe","room":"admin:system"}', True),
    (["quote:read"], ["admin:*"], '{"type":"subscribe","room":"admin:system"}', False),
    (["admin:monitor"], [], '{"type":"publish","room":"admin:system","data":1}', False),
    ([], ["user:*"], '{"type":"subscribe","room":"user:someone-else"}', False),
])
def test_namespace_rules(perms: list[str], grants: list[str], frame: str, allowed: bool) -> None:
    s = authed(perms, grants)
    actions = s.on_frame(frame, 1.0)
    if allowed:
        assert not codes(actions)
    else:
        assert codes(actions) == ["forbidden"]


def test_user_namespace_owner_rule() -> None:
    s = authed([], [])
    assert s.principal is not None
    [sub] = s.on_frame(f'{{"type":"subscribe","room":"user:{s.principal.user}"}}', 1.0)
    assert isinstance(sub, DoSubscribe)


def test_rate_limit_then_recovery() -> None:
    s = authed([], [], rate_limit_per_second=10.0, rate_limit_burst=3)
    results = [codes(s.on_frame('{"type":"ping"}', 5.0)) for _ in range(4)]
    assert results[:3] == [[], [], []]
    assert results[3] == ["rate_limited"]
    assert codes(s.on_frame('{"type":"ping"}', 5.2)) == []


def test_error_budget_closes_with_1008() -> None:
    s = authed([], [], max_errors_per_minute=3)
    for i in range(3):
        assert not any(isinstance(a, CloseConnection) for a in s.on_frame("{bad", float(i)))
    actions = s.on_frame("{bad", 4.0)
    assert codes(actions) == ["invalid_json", "too_many_errors"]
    assert CloseConnection(1008, "too many errors") in actions
    # errors older than a minute no longer count
    s2 = authed([], [], max_errors_per_minute=1)
    s2.on_frame("{bad", 0.0)
    assert codes(s2.on_frame("{bad", 61.0)) == ["invalid_json"]


def test_too_many_subscriptions() -> None:
    s = authed([], ["bench:*"], max_subscriptions=1)
    s.rooms.add("bench:a")
    assert codes(s.on_frame('{"type":"subscribe","room":"bench:b"}', 1.0)) == [
        "too_many_subscriptions"]


def test_auth_frame_failures_close_4001() -> None:
    s = make_session()
    actions = s.on_frame('{"type":"auth","token":"not-a-jwt"}', 0.0)
    assert codes(actions) == ["token_invalid"]
    assert CloseConnection(4001, "token_invalid") in actions


def test_second_auth_rejected() -> None:
    s = authed([], [])
    tok = mint_token(SECRET, str(uuid.uuid4()), [], [], 60)
    assert codes(s.on_frame(f'{{"type":"auth","token":"{tok}"}}', 1.0)) == [
        "already_authenticated"]


def test_publish_decision_remembered_and_reset_on_new_identity() -> None:
    s = authed(["publish"], ["bench:*"])
    for _ in range(3):
        [pub] = s.on_frame('{"type":"publish","room":"bench:a","data":1}', 1.0)
        assert isinstance(pub, DoPublish)
    # a new identity without the permission must be checked again, not served from memory
    tok = mint_token(SECRET, str(uuid.uuid4()), [], ["bench:*"], 60)
    [auth] = make_session().on_frame(f'{{"type":"auth","token":"{tok}"}}', 0.0)
    assert isinstance(auth, Authenticate)
    s.set_principal(auth.principal)
    assert codes(s.on_frame('{"type":"publish","room":"bench:a","data":1}', 1.0)) == ["forbidden"]
