"""Pure translation of policy-engine output into policy-map bytes, and the diff to apply.

No I/O. :func:`encode_policy` turns one endpoint's :class:`EndpointPolicy` entries into the exact
``(key bytes → value bytes)`` the BPF policy map holds for that endpoint; :func:`diff` says which keys
to write and which to delete, so a change rewrites only what it affects. Deny wins: an allow entry
covered by a deny entry for the same identity would shadow that deny in the LPM lookup (the longest
prefix wins), so it is written as a deny (the engine folds this already; doing it here too keeps the
map correct for hand-made entries).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping

import msgspec

from nodemesh.policy.model import PolicyKey, PolicyValue
from services.datapath.maps import (
    POLICY_DENY,
    POLICY_STATIC_PREFIX,
    PolicyKeyC,
    PolicyValueC,
)

__all__ = [
    "PolicyDiff",
    "decode_key",
    "diff",
    "encode_key",
    "encode_key_ctypes",
    "encode_policy",
    "encode_value",
    "encode_value_ctypes",
    "fold_deny",
]


class PolicyDiff(msgspec.Struct, kw_only=True):
    upsert: dict[bytes, bytes] = msgspec.field(default_factory=dict)
    delete: list[bytes] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upsert or self.delete)


_KEY = struct.Struct("<IIIBB")  # prefixlen, ep_id, identity, egress, protocol (+ port, big-endian)
_PORT = struct.Struct(">H")
_VALUE = struct.Struct("<HBBBBH")  # proxy_port (big-endian, packed separately), flags, auth, prefixes, pad


def encode_key(ep_id: int, key: PolicyKey) -> bytes:
    """The LPM key: 72 static bits, then 8 of protocol and ``port_prefix_len`` of port if any.

    Packed with ``struct`` (not the ctypes mirror) because bulk applies encode tens of thousands of
    keys; ``tests/datapath/test_plan.py`` checks both encodings agree byte for byte.
    """
    if key.proto:
        plen = key.port_prefix_len if key.dport or key.port_prefix_len else 0
        mask = ((0xFFFF << (16 - plen)) & 0xFFFF) if plen else 0
        port = key.dport & mask
        prefix = POLICY_STATIC_PREFIX + 8 + plen
        proto = key.proto
    else:
        port, prefix, proto = 0, POLICY_STATIC_PREFIX, 0
    return _KEY.pack(prefix, ep_id, key.identity, key.direction, proto) + _PORT.pack(port)


def encode_key_ctypes(ep_id: int, key: PolicyKey) -> bytes:
    """The same key through the ctypes mirror (the reference :func:`encode_key` must match)."""
    plen = (key.port_prefix_len if key.dport or key.port_prefix_len else 0) if key.proto else 0
    mask = ((0xFFFF << (16 - plen)) & 0xFFFF) if plen else 0
    return PolicyKeyC(
        prefixlen=POLICY_STATIC_PREFIX + (8 + plen if key.proto else 0),
        ep_id=ep_id,
        identity=key.identity,
        egress=key.direction,
        protocol=key.proto,
        dport=socket.htons(key.dport & mask if key.proto else 0),
    ).to_bytes()


def decode_key(raw: bytes) -> tuple[int, PolicyKey]:
    k = PolicyKeyC.from_buffer_copy(raw)
    rest = k.prefixlen - POLICY_STATIC_PREFIX
    proto = k.protocol if rest >= 8 else 0
    plen = max(0, rest - 8)
    return int(k.ep_id), PolicyKey(
        identity=int(k.identity),
        direction=int(k.egress),
        proto=proto,
        dport=socket.ntohs(k.dport) if plen else 0,
        port_prefix_len=plen,
    )


def encode_value(key: PolicyKey, value: PolicyValue) -> bytes:
    plen = key.port_prefix_len if key.proto else 0
    raw = _VALUE.pack(0, POLICY_DENY if value.deny else 0, value.auth_type, 8 if key.proto else 0, plen, 0)
    return _PORT.pack(value.proxy_port) + raw[2:]


def encode_value_ctypes(key: PolicyKey, value: PolicyValue) -> bytes:
    plen = key.port_prefix_len if key.proto else 0
    return PolicyValueC(
        proxy_port=socket.htons(value.proxy_port),
        flags=POLICY_DENY if value.deny else 0,
        auth_type=value.auth_type,
        proto_prefix=8 if key.proto else 0,
        port_prefix=plen,
    ).to_bytes()


def fold_deny(entries: Mapping[PolicyKey, PolicyValue]) -> dict[PolicyKey, PolicyValue]:
    """Turn every allow entry covered by a same-identity deny entry into a deny (deny wins)."""
    denies: dict[tuple[int, int], list[PolicyKey]] = {}
    for k, v in entries.items():
        if v.deny:
            denies.setdefault((k.identity, k.direction), []).append(k)
    if not denies:
        return dict(entries)
    out: dict[PolicyKey, PolicyValue] = {}
    for k, v in entries.items():
        if not v.deny and any(d.covers(k) for d in denies.get((k.identity, k.direction), ())):
            v = PolicyValue(deny=True)
        out[k] = v
    return out


def encode_policy(ep_id: int, entries: Mapping[PolicyKey, PolicyValue]) -> dict[bytes, bytes]:
    """Every map entry of one endpoint."""
    return {encode_key(ep_id, k): encode_value(k, v) for k, v in fold_deny(entries).items()}


def diff(current: Mapping[bytes, bytes], desired: Mapping[bytes, bytes]) -> PolicyDiff:
    """What to write and delete to turn ``current`` into ``desired``."""
    d = PolicyDiff()
    for k, v in desired.items():
        if current.get(k) != v:
            d.upsert[k] = v
    d.delete = [k for k in current if k not in desired]
    return d
