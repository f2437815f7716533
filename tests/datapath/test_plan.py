"""Pure policy-map encoding: struct packing equals the ctypes mirror, LPM prefixes, deny folding, diffs."""

from __future__ import annotations

import random

import pytest

from nodemesh.policy.model import PolicyKey, PolicyValue, port_range_chunks
from services.datapath.maps import PolicyKeyC
from services.datapath.plan import (
    decode_key,
    diff,
    encode_key,
    encode_key_ctypes,
    encode_policy,
    encode_value,
    encode_value_ctypes,
    fold_deny,
)


def _random_keys(n: int) -> list[tuple[PolicyKey, PolicyValue]]:
    r = random.Random(42)
    out = []
    for _ in range(n):
        proto = r.choice((0, 1, 6, 17, 132))
        plen = r.choice((0, 8, 14, 16)) if proto else 0
        port = r.randrange(65536) if plen else 0
        key = PolicyKey(r.choice((0, 2, 1 << 24, r.randrange(1 << 24))), r.randrange(2), proto, port, plen)
        out.append(
            (key, PolicyValue(deny=r.random() < 0.3, auth_type=r.randrange(3), proxy_port=r.randrange(65536)))
        )
    return out


def test_struct_encoding_matches_ctypes_mirror() -> None:
    for key, value in _random_keys(3000):
        assert encode_key(7, key) == encode_key_ctypes(7, key)
        assert encode_value(key, value) == encode_value_ctypes(key, value)


@pytest.mark.parametrize(
    ("key", "prefix", "port"),
    [
        (PolicyKey(5, 0), 72, 0),  # L3-only: identity and direction only
        (PolicyKey(5, 0, 6), 80, 0),  # L3 + protocol, any port
        (PolicyKey(5, 0, 6, 80, 16), 96, 80),  # L3 + L4
        (PolicyKey(0, 1, 17, 8080, 14), 94, 8080),  # a range chunk 8080-8083
        (PolicyKey(0, 1, 1, 8, 16), 96, 8),  # ICMP echo request: type in the port
    ],
    ids=["l3", "l3-proto", "l3-l4", "range-chunk", "icmp-type"],
)
def test_lpm_prefix_lengths(key: PolicyKey, prefix: int, port: int) -> None:
    raw = encode_key(3, key)
    c = PolicyKeyC.from_buffer_copy(raw)
    assert c.prefixlen == prefix
    assert int.from_bytes(raw[14:16], "big") == port
    assert decode_key(raw) == (3, key)


def test_range_chunks_cover_exactly_the_range() -> None:
    chunks = port_range_chunks(9000, 9002)
    covered = set()
    for port, plen in chunks:
        lo, hi = PolicyKey(0, 0, 6, port, plen).port_range()
        covered |= set(range(lo, hi + 1))
    assert covered == {9000, 9001, 9002}


def test_fold_deny_only_within_the_same_identity() -> None:
    entries = {
        PolicyKey(5, 0): PolicyValue(deny=True),
        PolicyKey(5, 0, 6, 80, 16): PolicyValue(),  # shadowed by the L3 deny: must become a deny
        PolicyKey(6, 0, 6, 80, 16): PolicyValue(),  # another identity: untouched
        PolicyKey(5, 1, 6, 80, 16): PolicyValue(),  # other direction: untouched
    }
    out = fold_deny(entries)
    assert out[PolicyKey(5, 0, 6, 80, 16)].deny
    assert not out[PolicyKey(6, 0, 6, 80, 16)].deny
    assert not out[PolicyKey(5, 1, 6, 80, 16)].deny


def test_diff_is_minimal() -> None:
    a = encode_policy(1, {PolicyKey(5, 0, 6, 80, 16): PolicyValue(), PolicyKey(6, 0): PolicyValue()})
    b = encode_policy(
        1, {PolicyKey(5, 0, 6, 80, 16): PolicyValue(), PolicyKey(7, 0): PolicyValue(auth_type=1)}
    )
    d = diff(a, b)
    assert list(d.upsert) == [encode_key(1, PolicyKey(7, 0))]
    assert d.delete == [encode_key(1, PolicyKey(6, 0))]
    assert not diff(b, b)
