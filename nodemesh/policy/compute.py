"""One endpoint's policy map from the rules that select it: merging, auth inheritance, deny-wins.

The BPF lookup takes the most specific hit (Cilium's precedence: port specificity first, then
identity), so "deny wins regardless of specificity" and "an L3 rule's auth type covers that peer's
L4 entries" cannot be left to the lookup. They are folded into the entries here, as Cilium's
``MapState`` does:

- an allow entry wholly covered by a deny entry is removed; one that only overlaps it gets a deny
  entry for the overlap (which is at least as specific as the allow, so it is found first);
- an allow entry without an explicit auth type inherits the auth type of an allow entry that covers
  it; where they only overlap, the overlap gets its own entry carrying that auth type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from nodemesh.policy.model import (
    DIR_EGRESS,
    DIR_INGRESS,
    PROTO_ANY,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Endpoint,
    EndpointPolicy,
    HTTPRule,
    PolicyKey,
    PolicyValue,
    ProxyPorts,
    port_range_chunks,
)
from nodemesh.policy.rules import Peer, PortSpec, Rule

__all__ = ["compute_endpoint", "intersect", "port_keys"]

HOST_ID = 1


class _Allow:
    __slots__ = ("auth", "explicit", "l7", "plain", "proxy")

    def __init__(self) -> None:
        self.auth = 0
        self.explicit = False
        self.proxy = 0
        self.l7: set[HTTPRule] = set()
        self.plain = False  # some contributing rule allows it without L7 (→ a match-all L7 rule)

    def merge_rule(self, auth: int | None, proxy: int, l7: tuple[HTTPRule, ...] | None) -> None:
        if auth is not None:
            self.auth = max(self.auth, auth) if self.explicit else auth
            self.explicit = True
        if l7 is None:
            self.plain = True
        else:
            self.proxy = max(self.proxy, proxy)
            self.l7.update(l7)

    def copy(self) -> _Allow:
        c = _Allow()
        c.auth, c.explicit, c.proxy, c.l7, c.plain = (
            self.auth,
            self.explicit,
            self.proxy,
            set(self.l7),
            self.plain,
        )
        return c


def port_keys(spec: PortSpec, named: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(proto, dport, prefix) LPM triples for one port spec; ``named`` resolves a named port."""
    if spec.name:
        out = []
        for proto, port in named:
            if spec.proto in (PROTO_ANY, proto):
                out.append((proto, port, 16))
        return out
    if spec.icmp_type:
        return [(spec.proto, spec.port, 16)]
    if spec.port == 0:
        return [(spec.proto, 0, 0)]
    protos = (PROTO_TCP, PROTO_UDP, PROTO_SCTP) if spec.proto == PROTO_ANY else (spec.proto,)
    chunks = port_range_chunks(spec.port, spec.end_port or spec.port)
    return [(p, port, plen) for p in protos for port, plen in chunks]


def intersect(a: PolicyKey, b: PolicyKey) -> PolicyKey | None:
    """The key matching exactly the packets both keys match, or None if they are disjoint."""
    if a.direction != b.direction:
        return None
    if a.identity and b.identity and a.identity != b.identity:
        return None
    if a.proto and b.proto and a.proto != b.proto:
        return None
    alo, ahi = a.port_range()
    blo, bhi = b.port_range()
    if ahi < blo or bhi < alo:
        return None
    # Prefix-aligned ranges are nested or disjoint: the narrower one is the overlap.
    narrow = a if a.port_prefix_len >= b.port_prefix_len else b
    return PolicyKey(
        a.identity or b.identity, a.direction, a.proto or b.proto, narrow.dport, narrow.port_prefix_len
    )


def compute_endpoint(
    ep: Endpoint,
    rules: Iterable[Rule],
    enforced: tuple[bool, bool],
    peer_ids: Callable[[Peer], Iterable[int]],
    egress_named_ports: Mapping[str, Iterable[tuple[int, int]]],
    proxy_ports: ProxyPorts,
    allow_localhost: bool = True,
) -> EndpointPolicy:
    """The full map of one endpoint. ``peer_ids`` gives the identities a peer selects (0 = any)."""
    allows: dict[PolicyKey, _Allow] = {}
    denies: set[PolicyKey] = set()
    for rule in rules:
        d = rule.direction
        ids = {i for p in rule.peers for i in peer_ids(p)}
        if not ids:
            continue
        if 0 in ids:
            ids = {0}
        triples: set[tuple[int, int, int]] = set()
        if not rule.ports:
            triples.add((PROTO_ANY, 0, 0))
        for spec in rule.ports:
            if spec.name:
                named = ep.named_ports.get(spec.name)
                src = (
                    ([named] if named else []) if d == DIR_INGRESS else egress_named_ports.get(spec.name, ())
                )
                triples.update(port_keys(spec, src))
            else:
                triples.update(port_keys(spec, ()))
        proxy = proxy_ports.ingress if d == DIR_INGRESS else proxy_ports.egress
        for ident in ids:
            for proto, port, plen in triples:
                key = PolicyKey(ident, d, proto, port, plen)
                if rule.deny:
                    denies.add(key)
                else:
                    allows.setdefault(key, _Allow()).merge_rule(rule.auth_type, proxy, rule.l7)
    for d in (DIR_INGRESS, DIR_EGRESS):
        if not enforced[d]:
            allows.setdefault(PolicyKey(0, d), _Allow()).merge_rule(None, 0, None)
    if enforced[DIR_INGRESS] and allow_localhost:
        # Cilium's allow-localhost=always: kubelet probes from the host always reach the pod.
        allows.setdefault(PolicyKey(HOST_ID, DIR_INGRESS), _Allow()).merge_rule(None, 0, None)
    _inherit_auth(allows)
    _deny_wins(allows, denies)
    out = EndpointPolicy(ingress_enforced=enforced[DIR_INGRESS], egress_enforced=enforced[DIR_EGRESS])
    for key in denies:
        out.entries[key] = PolicyValue(deny=True)
    for key, a in allows.items():
        out.entries[key] = PolicyValue(False, a.auth, a.proxy)
        if a.proxy:
            out.l7[key] = tuple(sorted(a.l7 | ({HTTPRule()} if a.plain else set())))
    return out


def _inherit_auth(allows: dict[PolicyKey, _Allow]) -> None:
    changed = True
    while changed:
        changed = False
        coverers = [(k, a.auth) for k, a in allows.items() if a.explicit and a.auth]
        for ck, cauth in coverers:
            for bk, b in list(allows.items()):
                if b.explicit or bk == ck or b.auth >= cauth:
                    continue
                inter = intersect(ck, bk)
                if inter is None:
                    continue
                if inter == bk:
                    b.auth = cauth
                    changed = True
                elif inter not in allows:
                    n = b.copy()
                    n.auth = cauth
                    allows[inter] = n
                    changed = True


def _deny_wins(allows: dict[PolicyKey, _Allow], denies: set[PolicyKey]) -> None:
    for dk in list(denies):
        for ak in list(allows):
            inter = intersect(dk, ak)
            if inter is None:
                continue
            if inter == ak:
                del allows[ak]
            else:
                denies.add(inter)
    for dk in denies:
        allows.pop(dk, None)
