"""Which resolvers get names outside the cluster domain: resolv.conf parsing, excluding ourselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dns.upstreams import Upstreams, nameservers, parse_hostport

RESOLV = """\
# generated
search example.net
nameserver 10.255.255.53   # the host's resolver
nameserver 10.255.255.53
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
options ndots:1
nameserver 169.254.20.10 ; ourselves, in local mode
; nameserver 192.0.2.9
nameserver 127.0.0.53
"""


def test_nameservers_in_order_without_duplicates_or_garbage() -> None:
    assert nameservers(RESOLV) == [
        ("10.255.255.53", 53),
        ("fe80::1", 53),
        ("169.254.20.10", 53),
        ("127.0.0.53", 53),
    ]


def test_our_own_address_is_never_an_upstream() -> None:
    assert ("169.254.20.10", 53) not in nameservers(RESOLV, {("169.254.20.10", 53)})
    # on another port it is not us
    assert ("169.254.20.10", 53) in nameservers(RESOLV, {("169.254.20.10", 5353)})
    # listening on 0.0.0.0:53 we are every local address, not a remote one
    assert nameservers(RESOLV, {("0.0.0.0", 53)}) == [
        ("10.255.255.53", 53),
        ("fe80::1", 53),
        ("169.254.20.10", 53),
    ]


def test_hostport() -> None:
    assert parse_hostport("1.2.3.4") == ("1.2.3.4", 53)
    assert parse_hostport("1.2.3.4:5353") == ("1.2.3.4", 5353)
    assert parse_hostport("[::1]:54") == ("::1", 54)
    assert parse_hostport("::1") == ("::1", 53)
    for bad in ("host.example:53", "1.2.3.4:x", "1.2.3.4:70000", ""):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_explicit_list_wins_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_text("nameserver 192.0.2.1\n")
    assert Upstreams("127.0.0.9:5300, 192.0.2.7", str(f), []).current() == [
        ("127.0.0.9", 5300),
        ("192.0.2.7", 53),
    ]


def test_file_changes_are_followed(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_text("nameserver 192.0.2.1\nnameserver 169.254.20.10\n")
    ups = Upstreams("", str(f), [("169.254.20.10", 53)], recheck_s=0)
    assert ups.current() == [("192.0.2.1", 53)]
    f.write_text("nameserver 192.0.2.2\n")
    assert ups.current() == [("192.0.2.2", 53)]
    f.unlink()
    assert ups.current() == []
    f.write_text("nameserver 192.0.2.3\n")
    assert ups.current() == [("192.0.2.3", 53)]
