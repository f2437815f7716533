"""A reference of the datapath's policy lookup, for tests on both sides of the map.

Cilium's ``__policy_can_access`` does two LPM lookups — one with the peer's identity, one with
identity 0 — and takes the hit with the longer protocol/port prefix, preferring the identity-specific
one on a tie. That yields the precedence id/proto/port > ANY/proto/port > id/proto/ANY >
ANY/proto/ANY > id/ANY/ANY > ANY/ANY/ANY. The BPF program must agree with :func:`lookup`; the
engine's entries are built so that this lookup gives deny-wins semantics.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodemesh.policy.model import PROTO_ANY, PolicyKey, PolicyValue

__all__ = ["lookup", "specificity"]


def specificity(key: PolicyKey) -> int:
    """Bits of protocol+port the key fixes: 0 (any), 8 (protocol only), 8 + port prefix."""
    return 0 if key.proto == PROTO_ANY else 8 + key.port_prefix_len


def _lpm(
    entries: Mapping[PolicyKey, PolicyValue], identity: int, direction: int, proto: int, dport: int
) -> tuple[PolicyKey, PolicyValue] | None:
    best: tuple[PolicyKey, PolicyValue] | None = None
    for k, v in entries.items():
        if k.identity != identity or k.direction != direction:
            continue
        if k.proto not in (PROTO_ANY, proto):
            continue
        lo, hi = k.port_range()
        if k.proto != PROTO_ANY and not lo <= dport <= hi:
            continue
        if best is None or specificity(k) > specificity(best[0]):
            best = (k, v)
    return best


def lookup(
    entries: Mapping[PolicyKey, PolicyValue], identity: int, direction: int, proto: int, dport: int
) -> PolicyValue | None:
    """The entry the datapath applies to a new flow, or None (no hit: dropped, "Policy denied")."""
    specific = _lpm(entries, identity, direction, proto, dport) if identity else None
    wildcard = _lpm(entries, 0, direction, proto, dport)
    if specific and wildcard:
        return wildcard[1] if specificity(wildcard[0]) > specificity(specific[0]) else specific[1]
    hit = specific or wildcard
    return hit[1] if hit else None
