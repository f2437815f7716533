"""The stateful policy engine: add/update/delete policies, endpoints and identities; get back only
the map entries that changed, per endpoint.

A change recomputes only the endpoints it can affect — a policy change, the endpoints its old or new
rules select; an identity change, the endpoints with a rule whose peer set gained or lost that
identity (plus endpoints that have that identity, since their labels changed); an endpoint change,
that endpoint — and returns for each the exact diff (upserts + deletes) against what it had.

Peer sets are cached per peer (Cilium's selector cache): an identity change tests that identity
against each cached peer once instead of re-evaluating every rule.

An invalid policy is reported in ``Changes.status`` and is not applied; if an earlier version of it
was valid, that version stays enforced (so a bad edit cannot open what the policy closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from nodemesh.labels import RESERVED
from nodemesh.policy.compute import compute_endpoint
from nodemesh.policy.endpoint_state import EndpointState
from nodemesh.policy.labels import LabelSet
from nodemesh.policy.model import (
    DIR_EGRESS,
    DIR_INGRESS,
    LOCAL_IDENTITY_BASE,
    RESERVED_IDENTITIES,
    AuthPair,
    Endpoint,
    EndpointPolicy,
    HTTPRule,
    PolicyKey,
    PolicyRef,
    PolicyValue,
    ProxyPorts,
)
from nodemesh.policy.parse import parse_policy
from nodemesh.policy.rules import ParsedPolicy, ParseError, Peer, Rule

__all__ = ["Changes", "EndpointChange", "PolicyEngine", "auth_pairs"]

_WORLD = {4: ("world", "world-ipv4"), 6: ("world", "world-ipv6")}
_NO_LABELS = LabelSet(())


class EndpointChange(msgspec.Struct, kw_only=True):
    """What to write to one endpoint's map. ``removed``: the endpoint is gone (``deletes`` lists every
    key it had). ``l7`` is the endpoint's full L7 table when it changed (``l7_changed``)."""

    key: str
    upserts: dict[PolicyKey, PolicyValue] = msgspec.field(default_factory=dict)
    deletes: list[PolicyKey] = msgspec.field(default_factory=list)
    ingress_enforced: bool = False
    egress_enforced: bool = False
    removed: bool = False
    l7_changed: bool = False
    l7: dict[PolicyKey, tuple[HTTPRule, ...]] = msgspec.field(default_factory=dict)


class Changes(msgspec.Struct, kw_only=True):
    """Result of one engine call. ``status``: policies whose parse status was (re)computed, ref →
    errors (empty = valid). ``cidr_upserts``/``cidr_deletes``: ipcache LPM entries cidr → identity."""

    endpoints: dict[str, EndpointChange] = msgspec.field(default_factory=dict)
    status: dict[PolicyRef, tuple[ParseError, ...]] = msgspec.field(default_factory=dict)
    cidr_upserts: dict[str, int] = msgspec.field(default_factory=dict)
    cidr_deletes: dict[str, int] = msgspec.field(default_factory=dict)


def _reserved_labels(ident: int) -> list[str]:
    return list(RESERVED[ident])


class PolicyEngine:
    def __init__(
        self,
        *,
        proxy_ports: ProxyPorts | None = None,
        allow_localhost: bool = True,
        cidr_identities: Mapping[str, int] | None = None,
        from_scratch: bool = False,
    ) -> None:
        """``cidr_identities``: a previous run's CIDR → identity map; a CIDR still in use keeps its id.
        ``from_scratch``: recompute an affected endpoint's whole map instead of its changed keys
        (the reference path, for tests and debugging)."""
        self.from_scratch = from_scratch
        self.proxy_ports = proxy_ports or ProxyPorts()
        self.allow_localhost = allow_localhost
        self._preferred = dict(cidr_identities or {})
        self._labels: dict[int, LabelSet] = {i: LabelSet(_reserved_labels(i)) for i in RESERVED_IDENTITIES}
        self._cidr_ids: dict[str, int] = {}
        self._cidr_of: dict[int, str] = {}
        self._cidr_refs: dict[str, set[PolicyRef]] = {}
        self._policies: dict[PolicyRef, ParsedPolicy] = {}
        self._errors: dict[PolicyRef, tuple[ParseError, ...]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._ep_rules: dict[str, list[Rule]] = {}
        self._current: dict[str, EndpointPolicy] = {}
        self._state: dict[str, EndpointState] = {}
        self._ep_labels: dict[str, LabelSet] = {}  # parsed Endpoint.labels, per endpoint key
        self._peers: dict[Peer, frozenset[int]] = {}
        self._changed_peers: set[Peer] = set()  # peers whose identity set changed in this call

    # --- queries -----------------------------------------------------------------------------
    def policy(self, key: str) -> EndpointPolicy | None:
        return self._current.get(key)

    def policies(self) -> dict[str, EndpointPolicy]:
        return dict(self._current)

    def errors(self) -> dict[PolicyRef, tuple[ParseError, ...]]:
        return dict(self._errors)

    def cidr_identities(self) -> dict[str, int]:
        return dict(self._cidr_ids)

    def selecting(self, key: str) -> set[PolicyRef]:
        """The policies with a rule or an enforcement that selects endpoint ``key``."""
        ep = self._endpoints.get(key)
        if ep is None:
            return set()
        return {
            ref
            for ref, pol in self._policies.items()
            if any(self._selects(r.subject, r.host, ep) for r in pol.rules)
            or any(self._selects(e.subject, e.host, ep) for e in pol.enforce)
        }

    def required_auth_pairs(self) -> set[AuthPair]:
        eps = {k: ep.identity for k, ep in self._endpoints.items()}
        return auth_pairs(self._current, eps, self._labels)

    def auth_pairs_toward(self, remote: int, locals_: Iterable[int]) -> set[AuthPair]:
        """The ``(local, remote, type)`` pairs that the policy of identities ``locals_`` requires toward
        ``remote``, each computed as an endpoint of that identity alone — exactly as authd's engine does
        for the identities its node hosts. For endpoints this engine does not hold (a pod on another
        node, whose node checks its auth map for ``(local, remote, this node)``). Only identities with a
        non-deny rule that requires auth and whose peers can include ``remote`` are computed."""
        ls_remote = self._labels.get(remote)
        out: set[AuthPair] = set()
        if ls_remote is None:
            return out
        for ident in locals_:
            ep = Endpoint(key=f"identity:{ident}", identity=ident)
            if ident not in self._labels:
                continue
            rules = [
                r
                for pol in self._policies.values()
                for r in pol.rules
                if self._selects(r.subject, r.host, ep)
            ]
            if not any(
                r.auth_type
                and not r.deny
                and any(p.kind == "all" or remote in self._peer_ids(p) for p in r.peers)
                for r in rules
            ):
                continue
            enforced = [False, False]
            for pol in self._policies.values():
                for e in pol.enforce:
                    if self._selects(e.subject, e.host, ep):
                        enforced[e.direction] = True
            # a scratch ProxyPorts: the query must not allocate the node's proxy ports
            policy = compute_endpoint(
                ep, rules, (enforced[0], enforced[1]), self._peer_ids, {}, ProxyPorts(), self.allow_localhost
            )
            out |= {p for p in auth_pairs({ep.key: policy}, {ep.key: ident}, [remote]) if p.remote == remote}
        return out

    # --- policies ----------------------------------------------------------------------------
    def upsert_policy(self, obj: Mapping[str, Any]) -> Changes:
        res = parse_policy(obj)
        ch = Changes(status={res.ref: res.errors})
        if res.policy is None:
            self._errors[res.ref] = res.errors
            return ch  # the last valid version, if any, stays enforced
        self._errors.pop(res.ref, None)
        self._replace_policy(res.ref, res.policy, ch)
        return ch

    def delete_policy(self, kind: str, namespace: str, name: str) -> Changes:
        ref = PolicyRef(kind, namespace, name)
        ch = Changes()
        self._errors.pop(ref, None)
        if ref in self._policies:
            self._replace_policy(ref, None, ch)
        return ch

    def _replace_policy(self, ref: PolicyRef, new: ParsedPolicy | None, ch: Changes) -> None:
        self._changed_peers = set()
        old = self._policies.pop(ref, None)
        if new is not None:
            self._policies[ref] = new
        # CIDR identities first: new ones must exist before the rules that use them are resolved.
        changed_ids: set[int] = set()
        for c in new.cidrs if new else ():
            refs = self._cidr_refs.setdefault(c, set())
            refs.add(ref)
            if c not in self._cidr_ids and ipaddress.ip_network(c).prefixlen > 0:
                changed_ids.add(self._alloc_cidr(c, ch))
        for c in old.cidrs if old else ():
            if new is None or c not in new.cidrs:
                refs = self._cidr_refs.get(c, set())
                refs.discard(ref)
                if not refs:
                    self._cidr_refs.pop(c, None)
                    if c in self._cidr_ids:
                        changed_ids.add(self._free_cidr(c, ch))
        touched = {k for k, rules in self._ep_rules.items() if any(r.policy == ref for r in rules)}
        touched |= self._endpoints_for_identities(changed_ids)
        live = self._all_peers()
        self._peers = {p: s for p, s in self._peers.items() if p in live}
        for key, ep in self._endpoints.items():
            if new and any(self._selects(r.subject, r.host, ep) for r in new.rules):
                touched.add(key)
            if new and any(self._selects(e.subject, e.host, ep) for e in new.enforce):
                touched.add(key)
        for key in touched:
            self._recompute(key, ch)

    def _alloc_cidr(self, cidr: str, ch: Changes) -> int:
        used = set(self._cidr_of)
        ident = self._preferred.get(cidr, 0)
        if not ident or ident in used:
            ident = LOCAL_IDENTITY_BASE
            while ident in used or ident in self._preferred.values():
                ident += 1
        self._cidr_ids[cidr] = ident
        self._cidr_of[ident] = cidr
        world = _WORLD[ipaddress.ip_network(cidr).version]
        self._set_labels(ident, LabelSet([f"cidr:{cidr}", *(f"reserved:{w}" for w in world)]))
        ch.cidr_upserts[cidr] = ident
        ch.cidr_deletes.pop(cidr, None)
        return ident

    def _free_cidr(self, cidr: str, ch: Changes) -> int:
        ident = self._cidr_ids.pop(cidr)
        del self._cidr_of[ident]
        self._set_labels(ident, None)
        ch.cidr_deletes[cidr] = ident
        ch.cidr_upserts.pop(cidr, None)
        return ident

    # --- identities --------------------------------------------------------------------------
    def upsert_identity(self, ident: int, labels: Sequence[str]) -> Changes:
        ch = Changes()
        if ident in self._cidr_of or ident <= 0:
            return ch  # CIDR identities are ours; 0 is "any"
        ls = LabelSet(labels)
        if self._labels.get(ident) == ls:
            return ch
        self._changed_peers = set()
        self._set_labels(ident, ls)
        for key in self._endpoints_for_identities({ident}):
            self._recompute(key, ch)
        return ch

    def delete_identity(self, ident: int) -> Changes:
        ch = Changes()
        if ident not in self._labels or ident in self._cidr_of or ident in RESERVED_IDENTITIES:
            return ch
        self._changed_peers = set()
        self._set_labels(ident, None)
        for key in self._endpoints_for_identities({ident}):
            self._recompute(key, ch)
        return ch

    def _set_labels(self, ident: int, ls: LabelSet | None) -> None:
        if ls is None:
            self._labels.pop(ident, None)
        else:
            self._labels[ident] = ls
        for peer, ids in list(self._peers.items()):
            has = ls is not None and self._peer_matches(peer, ident, ls)
            if has != (ident in ids):
                self._peers[peer] = ids | {ident} if has else ids - {ident}
                self._changed_peers.add(peer)

    def _endpoints_for_identities(self, idents: set[int]) -> set[str]:
        """Endpoints a change of these identities affects (call right after ``_set_labels``)."""
        if not idents:
            return set()
        changed = self._changed_peers
        out = set()
        for key, ep in self._endpoints.items():
            if ep.identity in idents and ep.labels is None:
                out.add(key)
            elif changed and any(p in changed for r in self._ep_rules.get(key, ()) for p in r.peers):
                out.add(key)
        return out

    # --- endpoints ---------------------------------------------------------------------------
    def upsert_endpoint(self, ep: Endpoint) -> Changes:
        ch = Changes()
        old = self._endpoints.get(ep.key)
        if old == ep:
            return ch
        self._endpoints[ep.key] = ep
        self._ep_labels.pop(ep.key, None)
        self._recompute(ep.key, ch)
        if (old.named_ports if old else {}) != ep.named_ports:
            self._recompute_egress_named(ch)
        return ch

    def delete_endpoint(self, key: str) -> Changes:
        ch = Changes()
        ep = self._endpoints.pop(key, None)
        if ep is None:
            return ch
        cur = self._current.pop(key, EndpointPolicy())
        self._ep_rules.pop(key, None)
        self._state.pop(key, None)
        self._ep_labels.pop(key, None)
        ch.endpoints[key] = EndpointChange(
            key=key, deletes=sorted(cur.entries), removed=True, l7_changed=True
        )
        if ep.named_ports:
            self._recompute_egress_named(ch)
        return ch

    def _recompute_egress_named(self, ch: Changes) -> None:
        for key, rules in self._ep_rules.items():
            if any(r.direction == DIR_EGRESS and any(p.name for p in r.ports) for r in rules):
                self._recompute(key, ch)

    # --- resolution --------------------------------------------------------------------------
    def _labels_of(self, ep: Endpoint) -> LabelSet:
        if ep.labels is not None:
            ls = self._ep_labels.get(ep.key)
            if ls is None or self._endpoints.get(ep.key) is not ep:
                ls = LabelSet(ep.labels)
                if self._endpoints.get(ep.key) is ep:
                    self._ep_labels[ep.key] = ls
            return ls
        return self._labels.get(ep.identity) or _NO_LABELS

    def _selects(self, subject: Any, host: bool, ep: Endpoint) -> bool:
        return bool(host == ep.host and subject.matches(self._labels_of(ep)))

    def _all_peers(self) -> set[Peer]:
        return {p for pol in self._policies.values() for r in pol.rules for p in r.peers}

    def _peer_matches(self, peer: Peer, ident: int, ls: LabelSet) -> bool:
        if peer.kind == "selector":
            return peer.selector is not None and peer.selector.matches(ls)
        if peer.kind == "cidr":
            if ident in self._cidr_of:
                return peer.contains_cidr(self._cidr_of[ident])
            net = ipaddress.ip_network(peer.cidr)
            if net.prefixlen == 0:  # 0.0.0.0/0 is the world, as Cilium maps it
                return any(ls.get("reserved", w) for w in _WORLD[net.version])
        return False

    def _peer_ids(self, peer: Peer) -> frozenset[int]:
        if peer.kind == "all":
            return frozenset({0})
        ids = self._peers.get(peer)
        if ids is None:
            ids = frozenset(i for i, ls in self._labels.items() if self._peer_matches(peer, i, ls))
            self._peers[peer] = ids
        return ids

    def _egress_named_ports(self) -> dict[str, set[tuple[int, int]]]:
        out: dict[str, set[tuple[int, int]]] = {}
        for ep in self._endpoints.values():
            for name, pp in ep.named_ports.items():
                out.setdefault(name, set()).add(pp)
        return out

    def _recompute(self, key: str, ch: Changes) -> None:
        ep = self._endpoints.get(key)
        if ep is None:
            return
        rules = [
            r for pol in self._policies.values() for r in pol.rules if self._selects(r.subject, r.host, ep)
        ]
        enforced = [False, False]
        for pol in self._policies.values():
            for e in pol.enforce:
                if not enforced[e.direction] and self._selects(e.subject, e.host, ep):
                    enforced[e.direction] = True
        self._ep_rules[key] = rules
        named = self._egress_named_ports() if any(p.name for r in rules for p in r.ports) else {}
        enf = (enforced[DIR_INGRESS], enforced[DIR_EGRESS])
        old = self._current.get(key)
        if self.from_scratch:
            new = compute_endpoint(
                ep, rules, enf, self._peer_ids, named, self.proxy_ports, self.allow_localhost
            )
            old_entries = old.entries if old else {}
            upserts = {k: v for k, v in new.entries.items() if old_entries.get(k) != v}
            deletes = sorted(k for k in old_entries if k not in new.entries)
            l7_changed = old is None or old.l7 != new.l7
        else:
            state = self._state.setdefault(key, EndpointState())
            upserts, deletes, l7_changed = state.update(
                ep, rules, enf, self._peer_ids, named, self.proxy_ports, self.allow_localhost
            )
            new = state.policy
            l7_changed = l7_changed or old is None
        self._current[key] = new
        change = EndpointChange(
            key=key,
            upserts=upserts,
            deletes=deletes,
            ingress_enforced=new.ingress_enforced,
            egress_enforced=new.egress_enforced,
            l7_changed=l7_changed,
            l7=dict(new.l7),
        )
        enforcement_changed = old is None or (old.ingress_enforced, old.egress_enforced) != tuple(enforced)
        if change.upserts or change.deletes or change.l7_changed or enforcement_changed:
            ch.endpoints[key] = change


def auth_pairs(
    policies: Mapping[str, EndpointPolicy],
    endpoint_identity: Mapping[str, int],
    identities: Iterable[int],
) -> set[AuthPair]:
    """(local, remote, auth type) for every allow entry that requires authentication. An entry for
    any peer (identity 0) stands for every known workload identity (not reserved, not CIDR)."""
    workloads = sorted(i for i in identities if 256 <= i < LOCAL_IDENTITY_BASE)
    out: set[AuthPair] = set()
    for key, pol in policies.items():
        local = endpoint_identity.get(key)
        if local is None:
            continue
        for k, v in pol.entries.items():
            if v.deny or not v.auth_type:
                continue
            for remote in [k.identity] if k.identity else workloads:
                out.add(AuthPair(local, remote, v.auth_type))
    return out
