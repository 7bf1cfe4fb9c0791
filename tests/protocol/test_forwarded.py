"""X-Forwarded-For is believed only from server.trusted_proxies (pure logic)."""

from __future__ import annotations

import pytest

from conftest import make_config
from rtserver.admission import user_limit_refusal
from rtserver.config import ConfigError, _validate
from rtserver.forwarded import FORWARDED_OUTCOMES, TrustedProxies


def test_no_trusted_proxy_ignores_the_header() -> None:
    none = TrustedProxies([])
    assert not none
    assert none.client_address("198.51.100.9", ["203.0.113.1"]) == ("198.51.100.9",
                                                                   "untrusted_peer")
    assert none.client_address("198.51.100.9", []) == ("198.51.100.9", "direct")


def test_untrusted_peer_ignores_the_header() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client_address("192.0.2.4", ["203.0.113.1"]) == ("192.0.2.4",
                                                                   "untrusted_peer")


def test_rightmost_untrusted_hop_is_the_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    # The client forged "1.2.3.4"; the edge proxy appended the real 203.0.113.7; an inner
    # proxy 10.1.1.1 appended the edge's address.
    assert proxies.client_address("127.0.0.1", ["1.2.3.4, 203.0.113.7", "10.1.1.1"]) == (
        "203.0.113.7", "forwarded")
    assert proxies.client_address("127.0.0.1", ["10.2.2.2, 10.1.1.1"]) == ("10.2.2.2",
                                                                          "forwarded")
    assert proxies.client_address("::ffff:127.0.0.1", [" 2001:db8::1 "]) == ("2001:db8::1",
                                                                             "forwarded")


def test_missing_and_invalid_headers() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.client_address("127.0.0.1", []) == ("127.0.0.1", "missing")
    assert proxies.client_address("127.0.0.1", [" , "]) == ("127.0.0.1", "missing")
    assert proxies.client_address("127.0.0.1", ["unknown"]) == ("127.0.0.1", "invalid")
    assert proxies.client_address("127.0.0.1", ["junk, 127.0.0.1"]) == ("127.0.0.1", "invalid")
    assert {"direct", "untrusted_peer", "forwarded", "missing", "invalid"} == set(
        FORWARDED_OUTCOMES)


def test_config_refuses_a_bad_entry() -> None:
    import msgspec

    config = make_config()
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        _validate(msgspec.structs.replace(config, server=msgspec.structs.replace(
            config.server, trusted_proxies=["10.0.0.0/33"])))
    with pytest.raises(ConfigError, match="certfile"):
        _validate(msgspec.structs.replace(config, server=msgspec.structs.replace(
            config.server, certfile="/x.pem")))
    with pytest.raises(ConfigError, match="max_connections_per_user"):
        _validate(msgspec.structs.replace(config, limits=msgspec.structs.replace(
            config.limits, max_connections_per_user=0)))


def test_user_limit_refusal_pure() -> None:
    assert user_limit_refusal("u", 0, 1) is None
    refused = user_limit_refusal("u", 1, 1)
    assert refused is not None and refused[1].startswith("Required action: ")
    assert user_limit_refusal("u", 5, 3) is not None
