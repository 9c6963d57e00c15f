"""Who is calling: the client address behind trusted proxies, and whether it may call.

`X-Forwarded-For` is written by every hop and can be forged by the client for every hop before
the first proxy we trust, so it is read from the right: the socket peer counts unless it is a
trusted proxy, and then each address of the header, right to left, counts unless it is trusted
too. The first untrusted one is the client. When every hop is trusted (a request from the proxy
host itself) the left-most address is the client. An address that does not parse where the
client should be means the client is unknown — never a reason to look further left, where the
client writes what it likes. `Forwarded` (RFC 7239) is not read; proxies that speak only it
must be configured to send `X-Forwarded-For`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["IPAddress", "IPNetwork", "client_address", "is_allowed", "networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Config strings (`10.0.0.0/8`, `::1`, `192.0.2.7`) → networks; host bits are ignored."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def parse_address(text: str | None) -> IPAddress | None:
    """An address as peers and proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`,
    `::ffff:1.2.3.4` (→ the IPv4 address); None when it is not one."""
    if not text:
        return None
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        value = value.partition(":")[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(addr in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address (see the module docstring); `forwarded_for` is every
    `X-Forwarded-For` header value, in order. None when it cannot be known."""
    addr = parse_address(peer)
    if addr is None or not _trusted(addr, trusted):
        return addr
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_address(hop)
        if addr is None or not _trusted(addr, trusted):
            return addr
    return addr  # every hop trusted: the left-most (or the peer when there was no header)


def is_allowed(addr: IPAddress | None, allow_from: Sequence[IPNetwork]) -> bool:
    """An empty `allow_from` allows everyone; otherwise the address must be known and inside
    one of the networks."""
    if not allow_from:
        return True
    return addr is not None and any(addr in net for net in allow_from)
