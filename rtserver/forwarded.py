"""The client address of a handshake: the TCP peer, or ``X-Forwarded-For`` from a trusted proxy.

Pure logic, no I/O. ``server.trusted_proxies`` lists the reverse proxies (IP
addresses or CIDR networks) whose ``X-Forwarded-For`` header is believed:

* the TCP peer is not a trusted proxy: the peer is the client and the header,
  if any, is ignored (outcome ``untrusted_peer``: anybody can send one);
* the TCP peer is a trusted proxy: the header's addresses are read from the
  right (the hop the proxy appended itself) and the first one that is not a
  trusted proxy is the client (outcome ``forwarded``). Every hop left of it
  was written by that client and is never believed. When every hop is a
  trusted proxy the leftmost is the client;
* a trusted proxy sent no header (outcome ``missing``: e.g. its own health
  checks) or a hop that is not an IP address stops the walk (outcome
  ``invalid``): the last address verified so far is the client, which is the
  proxy itself when the rightmost hop is already malformed.

Several ``X-Forwarded-For`` headers are read as one comma-separated list, in
order (RFC 9110 field combination).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

from rtserver.metrics import REGISTRY

__all__ = ["CLIENT_ADDRESS", "FORWARDED_OUTCOMES", "ForwardedOutcome", "TrustedProxies"]

ForwardedOutcome = Literal["direct", "untrusted_peer", "forwarded", "missing", "invalid"]
#: Every outcome of :meth:`TrustedProxies.client_address` (a bounded metric label set).
FORWARDED_OUTCOMES: tuple[str, ...] = ("direct", "untrusted_peer", "forwarded", "missing",
                                       "invalid")
#: WebSocket handshakes by outcome (counted by the server for every handshake).
CLIENT_ADDRESS = REGISTRY.counter(
    "rtserver_client_address_total",
    "WebSocket handshakes by how the client address was found (server.trusted_proxies)",
    ("outcome",))

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(text: str) -> _Address | None:
    """An IP address (IPv4-mapped IPv6 as IPv4), or None if ``text`` is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The compiled ``server.trusted_proxies`` list."""

    __slots__ = ("_networks",)

    def __init__(self, entries: Sequence[str]) -> None:
        """Compile ``entries``; raise ``ValueError`` naming one that is not an IP or CIDR."""
        networks: list[_Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network "
                                 f"({exc})") from exc
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        """Whether any proxy is trusted."""
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (an IP address text) is a trusted proxy."""
        parsed = _parse_address(address)
        return parsed is not None and self._trusts(parsed)

    def _trusts(self, address: _Address) -> bool:
        return any(address.version == n.version and address in n for n in self._networks)

    def client_address(self, peer: str,
                       forwarded_for: Sequence[str]) -> tuple[str, ForwardedOutcome]:
        """The client's IP address and how it was found.

        ``peer``: the TCP peer's IP address; ``forwarded_for``: every
        ``X-Forwarded-For`` header value of the request, in order.
        """
        if not self._networks:
            return peer, "untrusted_peer" if forwarded_for else "direct"
        if not self.trusts(peer):
            return peer, "untrusted_peer" if forwarded_for else "direct"
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        if not any(hop.strip() for hop in hops):
            return peer, "missing"
        client = peer
        for hop in reversed(hops):
            parsed = _parse_address(hop)
            if parsed is None:
                return client, "invalid"
            client = str(parsed)
            if not self._trusts(parsed):
                return client, "forwarded"
        return client, "forwarded"
