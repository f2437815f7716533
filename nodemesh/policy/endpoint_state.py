"""Per-endpoint incremental state: which rule contributes which key, so a change costs what it touches.

For every endpoint the engine keeps, per selected rule, the identities and (proto, port, prefix)
triples it was expanded with and the keys it contributed; per key, the rules contributing to it.
An update re-selects rules, expands only what differs (a new identity in a peer set adds that
identity's keys, nothing else) and re-merges only the keys whose contributors changed.

Deny-wins and auth inheritance relate overlapping keys (see :mod:`compute`). While an endpoint has no
deny key and no key with an explicit auth type, the final entries are the merged keys themselves and
the update is O(change). Otherwise only the keys overlapping a changed key are re-folded, unless an
any-peer (identity 0) key changed, which overlaps every identity: then the whole map is folded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from nodemesh.policy.compute import _Allow, _deny_wins, _inherit_auth, intersect, port_keys
from nodemesh.policy.labels import Selector
from nodemesh.policy.model import (
    DIR_EGRESS,
    DIR_INGRESS,
    PROTO_ANY,
    Endpoint,
    EndpointPolicy,
    HTTPRule,
    PolicyKey,
    PolicyRef,
    PolicyValue,
    ProxyPorts,
)
from nodemesh.policy.rules import Peer, Rule

__all__ = ["EndpointState", "Triple"]

Triple = tuple[int, int, int]
_ANY: frozenset[Triple] = frozenset({(PROTO_ANY, 0, 0)})
_PSEUDO = PolicyRef("", "", "")
#: Pseudo-rules for what is not written by a policy: allow-all in a direction that is not enforced
#: (Cilium writes the same key) and allow-localhost (kubelet probes reach the pod).
OPEN = {d: Rule(_PSEUDO, Selector(), False, d, False, (Peer("all"),), ()) for d in (DIR_INGRESS, DIR_EGRESS)}
LOCALHOST = Rule(_PSEUDO, Selector(), False, DIR_INGRESS, False, (), ())
HOST_ID = 1
_PLAIN = _Allow()
_PLAIN.plain = True
_ALLOW = PolicyValue()


Slot = tuple[PolicyRef, int]


def _slot(rule: Rule) -> Slot:
    return (
        (rule.policy, rule.index)
        if rule.policy is not _PSEUDO
        else (_PSEUDO, -1 - rule.direction - 2 * (rule is LOCALHOST))
    )


class EndpointState:
    def __init__(self) -> None:
        # Contributions are tracked per rule slot (policy, index), so editing one rule of a policy
        # applies only the difference between its old and new expansion.
        self.slot_rule: dict[Slot, Rule] = {}
        self.slot_ids: dict[Slot, frozenset[int]] = {}
        self.slot_triples: dict[Slot, frozenset[Triple]] = {}
        self.allow_src: dict[PolicyKey, set[Slot]] = {}
        self.deny_src: dict[PolicyKey, set[Slot]] = {}
        self.merged: dict[PolicyKey, _Allow] = {}
        self.auth_keys: set[PolicyKey] = set()
        self.policy = EndpointPolicy()
        self.complex = False  # the last fold had denies or auth: entries may hold derived keys
        self.raw_by_id: dict[int, set[PolicyKey]] = {}  # keys of allow_src and deny_src, by identity
        self.final_by_id: dict[int, set[PolicyKey]] | None = None  # keys of policy.entries (complex only)

    def update(
        self,
        ep: Endpoint,
        rules: Iterable[Rule],
        enforced: tuple[bool, bool],
        peer_ids: Callable[[Peer], Iterable[int]],
        egress_named: Mapping[str, Iterable[tuple[int, int]]],
        proxy_ports: ProxyPorts,
        allow_localhost: bool,
    ) -> tuple[dict[PolicyKey, PolicyValue], list[PolicyKey], bool]:
        """Bring the state to these rules; returns (upserts, deletes, l7 changed)."""
        wanted: dict[Slot, Rule] = {_slot(r): r for r in rules}
        for d in (DIR_INGRESS, DIR_EGRESS):
            if not enforced[d]:
                wanted[_slot(OPEN[d])] = OPEN[d]
        if enforced[DIR_INGRESS] and allow_localhost:
            wanted[_slot(LOCALHOST)] = LOCALHOST
        dirty: set[PolicyKey] = set()
        for slot in [s for s in self.slot_rule if s not in wanted]:
            gone = self.slot_rule.pop(slot)
            self._contribute(slot, gone, self.slot_ids.pop(slot), self.slot_triples.pop(slot), False, dirty)
        for slot, rule in wanted.items():
            ids = self._ids(rule, peer_ids)
            triples = self._triples(rule, ep, egress_named)
            old = self.slot_rule.get(slot)
            if old is None:
                self._contribute(slot, rule, ids, triples, True, dirty)
            elif old.deny != rule.deny or old.direction != rule.direction:
                self._contribute(slot, old, self.slot_ids[slot], self.slot_triples[slot], False, dirty)
                self._contribute(slot, rule, ids, triples, True, dirty)
            else:
                old_ids, old_triples = self.slot_ids[slot], self.slot_triples[slot]
                if old_ids != ids or old_triples != triples:
                    both = old_ids & ids
                    self._contribute(slot, rule, both, old_triples - triples, False, dirty)
                    self._contribute(slot, rule, both, triples - old_triples, True, dirty)
                    self._contribute(slot, rule, old_ids - ids, old_triples, False, dirty)
                    self._contribute(slot, rule, ids - old_ids, triples, True, dirty)
                if (old.auth_type, old.l7) != (rule.auth_type, rule.l7):
                    d = rule.direction
                    dirty.update(PolicyKey(i, d, *t) for i in ids for t in triples)
            self.slot_rule[slot], self.slot_ids[slot], self.slot_triples[slot] = rule, ids, triples
        for key in dirty:
            self._remerge(key, proxy_ports)
        return self._fold(dirty, enforced)

    # --- contributions -----------------------------------------------------------------------
    @staticmethod
    def _ids(rule: Rule, peer_ids: Callable[[Peer], Iterable[int]]) -> frozenset[int]:
        if rule is LOCALHOST:
            return frozenset({HOST_ID})
        if len(rule.peers) == 1:
            ids = frozenset(peer_ids(rule.peers[0]))
        else:
            ids = frozenset(i for p in rule.peers for i in peer_ids(p))
        return frozenset({0}) if 0 in ids else ids

    @staticmethod
    def _triples(
        rule: Rule, ep: Endpoint, egress_named: Mapping[str, Iterable[tuple[int, int]]]
    ) -> frozenset[Triple]:
        if not rule.ports:
            return _ANY
        out: set[Triple] = set()
        for spec in rule.ports:
            if spec.name and rule.direction == DIR_INGRESS:
                named = ep.named_ports.get(spec.name)
                out.update(port_keys(spec, [named] if named else []))
            elif spec.name:
                out.update(port_keys(spec, egress_named.get(spec.name, ())))
            else:
                out.update(port_keys(spec, ()))
        return frozenset(out)

    def _contribute(
        self,
        slot: Slot,
        rule: Rule,
        ids: Iterable[int],
        triples: Iterable[Triple],
        add: bool,
        dirty: set[PolicyKey],
    ) -> None:
        src = self.deny_src if rule.deny else self.allow_src
        d = rule.direction
        triples = list(triples)
        for ident in ids:
            for proto, port, plen in triples:
                key = PolicyKey(ident, d, proto, port, plen)
                slots = src.get(key)
                if add:
                    if slots is None:
                        src[key] = {slot}
                        self.raw_by_id.setdefault(ident, set()).add(key)
                    else:
                        slots.add(slot)
                elif slots is not None:
                    slots.discard(slot)
                    if not slots:
                        del src[key]
                        if key not in self.allow_src and key not in self.deny_src:
                            self.raw_by_id[ident].discard(key)
                dirty.add(key)

    def _remerge(self, key: PolicyKey, proxy_ports: ProxyPorts) -> None:
        slots = self.allow_src.get(key)
        if not slots:
            self.merged.pop(key, None)
            self.auth_keys.discard(key)
            return
        if len(slots) == 1:
            rule = self.slot_rule[next(iter(slots))]
            if rule.auth_type is None and rule.l7 is None:
                # The common case, shared: merged values are never mutated (the fold copies them).
                self.merged[key] = _PLAIN
                self.auth_keys.discard(key)
                return
        a = _Allow()
        proxy = proxy_ports.ingress if key.direction == DIR_INGRESS else proxy_ports.egress
        for slot in slots:
            rule = self.slot_rule[slot]
            a.merge_rule(rule.auth_type, proxy, rule.l7)
        self.merged[key] = a
        if a.explicit and a.auth:
            self.auth_keys.add(key)
        else:
            self.auth_keys.discard(key)

    # --- folding ------------------------------------------------------------------------------
    def _fold(
        self, dirty: set[PolicyKey], enforced: tuple[bool, bool]
    ) -> tuple[dict[PolicyKey, PolicyValue], list[PolicyKey], bool]:
        old = self.policy
        new = EndpointPolicy(ingress_enforced=enforced[DIR_INGRESS], egress_enforced=enforced[DIR_EGRESS])
        simple = not self.deny_src and not self.auth_keys
        was_complex, self.complex = self.complex, not simple
        if simple and not was_complex:
            # O(change): the final entries are the merged keys; only dirty keys can differ.
            new.entries, new.l7 = old.entries, old.l7
            upserts: dict[PolicyKey, PolicyValue] = {}
            deletes: list[PolicyKey] = []
            l7_changed = False
            for key in dirty:
                a = self.merged.get(key)
                if a is None:
                    if new.entries.pop(key, None) is not None:
                        deletes.append(key)
                    l7_changed |= new.l7.pop(key, None) is not None
                    continue
                val = _ALLOW if a is _PLAIN else PolicyValue(False, a.auth, a.proxy)
                if new.entries.get(key) != val:
                    new.entries[key] = val
                    upserts[key] = val
                rules = _l7_rules(a) if a.proxy else ()
                if new.l7.get(key, ()) != rules:
                    l7_changed = True
                    if rules:
                        new.l7[key] = rules
                    else:
                        new.l7.pop(key, None)
            self.policy = new
            return upserts, sorted(deletes), l7_changed
        if was_complex and not simple and self.final_by_id is not None:
            local = self._fold_local(dirty, old, new)
            if local is not None:
                return local
        allows = {k: a.copy() for k, a in self.merged.items()}
        denies = set(self.deny_src)
        _inherit_auth(allows)
        _deny_wins(allows, denies)
        for key in denies:
            new.entries[key] = PolicyValue(deny=True)
        for key, a in allows.items():
            new.entries[key] = PolicyValue(False, a.auth, a.proxy)
            rules = _l7_rules(a)
            if rules:
                new.l7[key] = rules
        self.policy = new
        self.final_by_id = None
        if not simple:
            self.final_by_id = {}
            for key in new.entries:
                self.final_by_id.setdefault(key.identity, set()).add(key)
        ups = {k: v for k, v in new.entries.items() if old.entries.get(k) != v}
        dels = sorted(k for k in old.entries if k not in new.entries)
        return ups, dels, old.l7 != new.l7

    def _fold_local(
        self, dirty: set[PolicyKey], old: EndpointPolicy, new: EndpointPolicy
    ) -> tuple[dict[PolicyKey, PolicyValue], list[PolicyKey], bool] | None:
        """Re-fold only the keys overlapping a dirty key. A final entry depends only on the raw keys
        that contain it, and those overlap the same dirty keys, so folding the raw keys that overlap
        a dirty key gives the right value for every final key that does. Dirty any-peer keys touch
        every identity: then the caller folds the whole map."""
        assert self.final_by_id is not None
        by_id: dict[int, list[PolicyKey]] = {}
        for k in dirty:
            by_id.setdefault(k.identity, []).append(k)
        if 0 in by_id:
            return None

        def touches(k: PolicyKey) -> bool:
            xs = dirty if k.identity == 0 else by_id.get(k.identity, ())
            return any(intersect(k, x) is not None for x in xs)

        ids = [*by_id, 0]
        raw = {k for i in ids for k in self.raw_by_id.get(i, ()) if touches(k)}
        allows = {k: self.merged[k].copy() for k in raw if k in self.merged}
        denies = {k for k in raw if k in self.deny_src}
        _inherit_auth(allows)
        _deny_wins(allows, denies)
        region: dict[PolicyKey, tuple[PolicyValue, tuple[HTTPRule, ...]]] = {}
        for k in denies:
            if touches(k):
                region[k] = (PolicyValue(deny=True), ())
        for k, a in allows.items():
            if touches(k):
                region[k] = (PolicyValue(False, a.auth, a.proxy), _l7_rules(a))
        new.entries, new.l7 = old.entries, old.l7
        index = self.final_by_id
        upserts: dict[PolicyKey, PolicyValue] = {}
        deletes: list[PolicyKey] = []
        l7_changed = False
        for k in [k for i in ids for k in index.get(i, ()) if touches(k) and k not in region]:
            del new.entries[k]
            index[k.identity].discard(k)
            deletes.append(k)
            l7_changed |= new.l7.pop(k, None) is not None
        for k, (val, rules) in region.items():
            if new.entries.get(k) != val:
                new.entries[k] = val
                upserts[k] = val
                index.setdefault(k.identity, set()).add(k)
            if new.l7.get(k, ()) != rules:
                l7_changed = True
                if rules:
                    new.l7[k] = rules
                else:
                    new.l7.pop(k, None)
        self.policy = new
        return upserts, sorted(deletes), l7_changed


def _l7_rules(a: _Allow) -> tuple[HTTPRule, ...]:
    if not a.proxy:
        return ()
    return tuple(sorted(a.l7 | ({HTTPRule()} if a.plain else set())))
