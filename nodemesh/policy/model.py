"""The policy engine's output model: per-endpoint policy-map entries, as Cilium's policy map holds them.

This module is the contract between the pure policy engine (``nodemesh.policy``) and the
datapath that writes BPF maps. A :class:`PolicyKey` mirrors Cilium's ``struct policy_key`` (identity,
direction, protocol, destination port with an LPM prefix over the port) and a :class:`PolicyValue`
mirrors ``struct policy_entry`` (deny, auth type, proxy port). Lookup precedence, as in Cilium's
``__policy_can_access``: id/proto/port, ANY/proto/port, id/proto/ANY, ANY/proto/ANY, id/ANY/ANY,
ANY/ANY/ANY; the engine already folds deny-wins into the entries, so the first hit is the verdict.
"""

from __future__ import annotations

import msgspec

from nodemesh.labels import RESERVED_IDS, RESERVED_NAMES

__all__ = [
    "AUTH_ALWAYS_FAIL",
    "AUTH_NONE",
    "AUTH_SPIRE",
    "DIR_EGRESS",
    "DIR_INGRESS",
    "LOCAL_IDENTITY_BASE",
    "PROTO_ANY",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_SCTP",
    "PROTO_TCP",
    "PROTO_UDP",
    "RESERVED_IDENTITIES",
    "RESERVED_IDS",
    "AuthPair",
    "Endpoint",
    "EndpointPolicy",
    "HTTPRule",
    "PolicyKey",
    "PolicyRef",
    "PolicyValue",
    "ProxyPorts",
    "port_range_chunks",
]

DIR_INGRESS = 0
DIR_EGRESS = 1

PROTO_ANY = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132

AUTH_NONE = 0
AUTH_SPIRE = 1
AUTH_ALWAYS_FAIL = 2

#: Cilium's reserved identities: id → name (one table, in :mod:`nodemesh.labels`).
RESERVED_IDENTITIES: dict[int, str] = RESERVED_NAMES

#: Node-local identities (CIDR identities) start here: Cilium's ``IdentityScopeLocal = 1 << 24``.
LOCAL_IDENTITY_BASE = 1 << 24


class PolicyKey(msgspec.Struct, frozen=True, order=True):
    """One policy-map key. ``identity`` 0 = any peer; ``proto`` 0 = any protocol (then ``dport`` is 0);
    ``dport`` 0 = any port; ``port_prefix_len`` is 16 for one port, less for a power-of-two-aligned
    chunk of a range, 0 when ``dport`` is 0. For ICMP the ICMP type is in ``dport``, as in Cilium."""

    identity: int
    direction: int  # DIR_INGRESS (0) | DIR_EGRESS (1)
    proto: int = PROTO_ANY
    dport: int = 0
    port_prefix_len: int = 0

    def port_range(self) -> tuple[int, int]:
        """The inclusive port range this key covers (0..65535 when the port is wildcarded)."""
        if self.port_prefix_len == 0:
            return (0, 65535)
        size = 1 << (16 - self.port_prefix_len)
        return (self.dport, self.dport + size - 1)

    def covers(self, other: PolicyKey) -> bool:
        """True if every packet matching ``other`` also matches ``self`` (same direction)."""
        if self.direction != other.direction:
            return False
        if self.identity not in (0, other.identity):
            return False
        if self.proto not in (PROTO_ANY, other.proto):
            return False
        lo, hi = self.port_range()
        olo, ohi = other.port_range()
        return lo <= olo and ohi <= hi


class PolicyValue(msgspec.Struct, frozen=True):
    """One policy-map value: deny, the auth type required (0 none, 1 spire, 2 always-fail) and the
    L7 proxy port to redirect to (0 = no redirect)."""

    deny: bool = False
    auth_type: int = AUTH_NONE
    proxy_port: int = 0


class HTTPRule(msgspec.Struct, frozen=True, order=True):
    """One ``rules.http`` entry of a CiliumNetworkPolicy; empty fields match anything. ``path`` and
    ``method`` are regular expressions as in Cilium; ``headers`` are ``"Name: value"`` or ``"Name"``."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[str, ...] = ()


class EndpointPolicy(msgspec.Struct, kw_only=True):
    """Everything the datapath writes for one endpoint.

    ``entries`` is exactly the content of the endpoint's policy map. A direction that is not enforced
    holds the allow-all key ``PolicyKey(0, dir)`` (Cilium writes the same), so the BPF program needs
    no separate flag; the ``*_enforced`` flags are for status and observability.
    ``l7`` lists, per redirecting key, the HTTP rules the per-node Envoy must apply for that peer and
    port (an empty tuple never occurs: an L4 allow merged with an L7 rule adds a match-all rule).
    """

    ingress_enforced: bool = False
    egress_enforced: bool = False
    entries: dict[PolicyKey, PolicyValue] = msgspec.field(default_factory=dict)
    l7: dict[PolicyKey, tuple[HTTPRule, ...]] = msgspec.field(default_factory=dict)


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint the engine computes a policy for.

    ``key`` is the datapath's own key (e.g. ``ns/pod`` or the endpoint id). Selection uses the labels
    of ``identity`` (from the identities given to the engine); ``labels`` overrides them when set (a
    host endpoint carries its node's labels here). ``host`` marks the node's host endpoint, which only
    ``nodeSelector`` rules (CiliumClusterwideNetworkPolicy) select. ``named_ports`` maps a container
    port name to ``(proto, port)`` for named ports in ``toPorts`` / NetworkPolicy ``ports``.
    """

    key: str
    identity: int
    labels: tuple[str, ...] | None = None
    host: bool = False
    named_ports: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)


class PolicyRef(msgspec.Struct, frozen=True, order=True):
    """Which policy object: kind (CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy |
    NetworkPolicy), namespace ("" for clusterwide), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


class AuthPair(msgspec.Struct, frozen=True, order=True):
    """Traffic between these identities needs authentication of this type (authd pre-authenticates).
    ``local`` is the identity of an endpoint on this node, ``remote`` the peer's identity."""

    local: int
    remote: int
    auth_type: int


class ProxyPorts(msgspec.Struct, frozen=True):
    """The L7 proxy ports L7 rules redirect to, one per direction (Cilium's cilium-http-ingress /
    cilium-http-egress listeners)."""

    ingress: int = 10001
    egress: int = 10002


def port_range_chunks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the inclusive port range ``lo..hi`` into LPM chunks ``(port, prefix_len)``, each a
    power-of-two-aligned block, fewest chunks first to last (Cilium's ``PortRangeToMaskedPorts``).

    >>> port_range_chunks(80, 80)
    [(80, 16)]
    >>> port_range_chunks(8080, 8083)
    [(8080, 14)]
    """
    if not (0 <= lo <= hi <= 65535):
        raise ValueError(f"bad port range {lo}..{hi}")
    out: list[tuple[int, int]] = []
    cur = lo
    while cur <= hi:
        # Largest block aligned at ``cur`` that fits in the range.
        size = cur & -cur if cur else 1 << 16
        while cur + size - 1 > hi:
            size >>= 1
        out.append((cur, 16 - size.bit_length() + 1))
        cur += size
    return out
