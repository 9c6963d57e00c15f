"""Client address behind trusted proxies, and allow_from."""

from __future__ import annotations

import ipaddress

import pytest

from daemon.webhooks.remote import client_address, is_allowed, networks, parse_address

TRUSTED = networks(["10.0.0.0/8", "127.0.0.1", "::1"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", [], "203.0.113.5"),
        ("203.0.113.5", ["192.0.2.1"], "203.0.113.5"),  # untrusted peer: header ignored
        ("10.1.1.1", [], "10.1.1.1"),  # trusted peer, no header: the proxy itself
        ("10.1.1.1", ["192.0.2.1"], "192.0.2.1"),
        ("10.1.1.1", ["198.51.100.7, 192.0.2.1"], "192.0.2.1"),  # right-most untrusted
        ("10.1.1.1", ["198.51.100.7, 192.0.2.1, 10.2.2.2"], "192.0.2.1"),
        ("10.1.1.1", ["198.51.100.7", "192.0.2.1, 10.2.2.2"], "192.0.2.1"),  # several headers
        ("10.1.1.1", ["10.3.3.3, 10.2.2.2"], "10.3.3.3"),  # all trusted: the left-most
        ("10.1.1.1", ["192.0.2.1, junk"], None),  # unparseable where the client should be
        ("10.1.1.1", ["junk, 192.0.2.1"], "192.0.2.1"),
        ("10.1.1.1", ["192.0.2.1:4711"], "192.0.2.1"),
        ("10.1.1.1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::1", ["2001:db8::2"], "2001:db8::2"),
        ("::ffff:10.1.1.1", ["192.0.2.1"], "192.0.2.1"),  # v4-mapped peer is the v4 address
        (None, ["192.0.2.1"], None),
        ("10.1.1.1", [" , ,"], "10.1.1.1"),
    ],
)
def test_client_address(peer: str | None, xff: list[str], expected: str | None) -> None:
    got = client_address(peer, xff, TRUSTED)
    assert (str(got) if got is not None else None) == expected


def test_allow_from() -> None:
    allow = networks(["192.0.2.0/24", "2001:db8::/32"])
    assert is_allowed(parse_address("192.0.2.9"), allow)
    assert is_allowed(parse_address("2001:db8::9"), allow)
    assert not is_allowed(parse_address("198.51.100.1"), allow)
    assert not is_allowed(None, allow)
    assert is_allowed(None, ())  # empty = anyone
    assert networks(["192.0.2.7/24"]) == (ipaddress.ip_network("192.0.2.0/24"),)
