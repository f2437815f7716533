"""CiliumNetworkPolicy ``toPorts[].rules.http`` → the node's L7 policy listeners (pure).

The datapath redirects every flow whose policy entry carries a proxy port to the node's Envoy
(docs/l7-policy.md); this module builds what answers there, per node:

- Listener ``nodemesh-l7-policy-<ingress|egress>`` on ``<node address>:<proxy port>``,
  ``transparent`` (the datapath hands over connections whose local address is the original
  destination), ``original_src`` (upstream connections keep the client's address, so the
  destination's own policy still sees the client's identity; its mark tells the datapath not to
  redirect that leg again and to return its replies here — as a listener filter for ingress, as an
  HTTP filter on the egress chains for pod destinations). One filter chain per local endpoint (the
  destination for ingress, the source for egress, split by pod / other destination) with an RBAC
  filter: one policy per (peer, port, HTTP rule) that the policy engine computed for that endpoint;
  anything else gets Cilium's 403 ``Access denied``. Allowed requests go to the original destination.
- Cluster ``nodemesh-l7-policy-<dir>``: ORIGINAL_DST; the destination is the connection's local
  address, restored by the ``original_dst`` listener filter.

Which rules apply is decided by the same engine the datapath runs
(:func:`nodemesh.policy.resolve.resolve`), over the node's pods, with identities derived
from the pods' labels (numbers are local to this translation; only the label → address mapping
matters here). Peers that are pods become their addresses; CIDR peers their CIDRs; ``host`` the
node address; ``world`` anything that is not a pod; identity 0 anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from nodemesh.policy.model import (
    DIR_EGRESS,
    DIR_INGRESS,
    Endpoint,
    EndpointPolicy,
    HTTPRule,
    PolicyKey,
    ProxyPorts,
)
from nodemesh.policy.resolve import resolve
from nodemesh.policy.visibility import Visibility, pod_visibility, with_visibility

from .l7policy_envoy import chain, cidrs, cluster, cluster_name, listener, listener_name
from .types import CLUSTER, LISTENER, TranslateInput, Translation

__all__ = [
    "L7PolicyInput",
    "cluster_name",
    "has_http_rules",
    "ingest",
    "l7_policy",
    "listener_name",
    "node_address",
]


@dataclass(frozen=True)
class L7PolicyInput:
    """``policies``: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy objects; ``pods`` and
    ``namespaces``: the cluster's; ``node_addresses``: node → the address its proxy listens on."""

    policies: Sequence[Mapping[str, Any]] = field(default_factory=list)
    pods: Sequence[Mapping[str, Any]] = field(default_factory=list)
    namespaces: Sequence[Mapping[str, Any]] = field(default_factory=list)
    node_addresses: Mapping[str, str] = field(default_factory=dict)
    ports: ProxyPorts = field(default_factory=ProxyPorts)
    access_log_cluster: str = ""
    cluster: str = "default"


@dataclass
class _Pod:
    key: str
    ip: str
    node: str
    identity: int
    named_ports: dict[str, tuple[int, int]]
    visibility: tuple[Visibility, ...] = ()


def _d(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _pods(inp: L7PolicyInput) -> tuple[list[_Pod], dict[int, list[str]]]:
    """Running pods with an address, and an identity per distinct label set (stable: sorted)."""
    from nodemesh.labels import pod_labels  # the identity service's own label rules

    ns_by_name = {
        str(_d(n.get("metadata")).get("name", "")): n for n in inp.namespaces if isinstance(n, Mapping)
    }
    rows: list[tuple[Mapping[str, Any], str, str, list[str]]] = []
    for p in inp.pods:
        if not isinstance(p, Mapping):
            continue
        meta, spec, st = _d(p.get("metadata")), _d(p.get("spec")), _d(p.get("status"))
        ip = st.get("podIP")
        if not isinstance(ip, str) or spec.get("hostNetwork"):
            continue
        try:
            ipaddress.IPv4Address(ip)
            clean = {"metadata": meta, "spec": spec}  # wrong-typed parts read as empty
            labels = pod_labels(clean, ns_by_name.get(str(meta.get("namespace") or "default")), "")
        except (ValueError, TypeError, AttributeError):
            continue
        rows.append((p, ip, str(spec.get("nodeName") or ""), labels))
    ids: dict[tuple[str, ...], int] = {}
    for lbl in sorted({tuple(r[3]) for r in rows}):
        ids[lbl] = 256 + len(ids)
    out = []
    for p, ip, node, labels in rows:
        meta = _d(p.get("metadata"))
        named: dict[str, tuple[int, int]] = {}
        for c in _d(p.get("spec")).get("containers") or []:
            for cp in _d(c).get("ports") or []:
                cp = _d(cp)
                if isinstance(cp.get("name"), str) and isinstance(cp.get("containerPort"), int):
                    proto = {"UDP": 17, "SCTP": 132}.get(str(cp.get("protocol", "TCP")), 6)
                    named[cp["name"]] = (proto, cp["containerPort"])
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        vis, _errors = pod_visibility(p)  # the datapath logs the errors; both leave those entries out
        out.append(_Pod(key, ip, node, ids[tuple(labels)], named, vis))
    return out, {i: list(lbl) for lbl, i in ids.items()}


def _regex(name: str, pattern: str) -> dict[str, Any]:
    return {"header": {"name": name, "string_match": {"safe_regex": {"regex": pattern}}}}


def _rule_permission(key: PolicyKey, rule: HTTPRule, peer: dict[str, Any] | None) -> dict[str, Any]:
    lo, hi = key.port_range()
    rules: list[dict[str, Any]] = [{"destination_port_range": {"start": lo, "end": hi + 1}}]
    if peer is not None:
        rules.append(peer)
    if rule.method:
        rules.append(_regex(":method", rule.method))
    if rule.path:
        rules.append(_regex(":path", rule.path))
    if rule.host:
        rules.append(_regex(":authority", rule.host))
    for h in rule.headers:
        name, sep, value = h.partition(":")
        hm: dict[str, Any] = {"name": name.strip().lower()}
        if sep:
            hm["string_match"] = {"exact": value.strip()}
        else:
            hm["present_match"] = True
        rules.append({"header": hm})
    return {"and_rules": {"rules": rules}}


class _Peers:
    """Identity → the addresses it stands for, as an RBAC matcher (on the remote address for
    ingress, the destination address for egress); ``None`` = anything."""

    def __init__(self, pods: list[_Pod], cidr_ids: Mapping[str, int], node_addr: str) -> None:
        self.by_id: dict[int, list[str]] = {}
        for p in pods:
            self.by_id.setdefault(p.identity, []).append(p.ip)
        for cidr, ident in cidr_ids.items():
            self.by_id.setdefault(ident, []).append(cidr)
        self.all_pods = [p.ip for p in pods]
        self.node_addr = node_addr

    def match(self, identity: int, direction: int) -> dict[str, Any] | None:
        """An RBAC principal (ingress: the client's address) or permission (egress: the
        destination address) for the peer; ``None`` = any peer."""
        if identity == 0:
            return None
        if direction == DIR_INGRESS:
            field_, any_of, not_, key = "direct_remote_ip", "or_ids", "not_id", "ids"
        else:
            field_, any_of, not_, key = "destination_ip", "or_rules", "not_rule", "rules"
        if identity in (2, 9):  # world: anything that is not a pod
            pods = cidrs(self.all_pods)
            if not pods:
                return None
            return {not_: {any_of: {key: [{field_: c} for c in pods]}}}
        ips = self.by_id.get(identity, [])
        if identity == 1 and self.node_addr:
            ips = [self.node_addr]
        if not ips:
            return {not_: {"any": True}}  # nobody has this identity now
        return {any_of: {key: [{field_: c} for c in cidrs(ips)]}}


def l7_policy(inp: L7PolicyInput) -> dict[str, dict[str, dict[str, Message]]]:
    """node → type URL → name → resource, for every node in ``inp.node_addresses`` that hosts an
    endpoint with L7 rules (other nodes get nothing). Never raises on bad objects: invalid
    policies are left out by the engine, malformed pods are skipped."""
    pods, identities = _pods(inp)
    out: dict[str, dict[str, dict[str, Message]]] = {}
    for node, addr in sorted(inp.node_addresses.items()):
        local = [p for p in pods if p.node == node]
        if not local or not addr:
            continue
        eps = [Endpoint(key=p.key, identity=p.identity, named_ports=p.named_ports) for p in local]
        res = resolve(inp.policies, eps, identities, proxy_ports=inp.ports)
        peers = _Peers(pods, res.cidr_identities, addr)
        chains: dict[int, list[dict[str, Any]]] = {DIR_INGRESS: [], DIR_EGRESS: []}
        for p in sorted(local, key=lambda p: p.key):
            ep = res.policies.get(p.key)
            if p.visibility:  # as the datapath writes it (nodemesh/policy/visibility.py)
                ep = with_visibility(ep or EndpointPolicy(), p.visibility, inp.ports)
            if ep is None or not ep.l7:
                continue
            for direction in (DIR_INGRESS, DIR_EGRESS):
                policies: dict[str, Any] = {}
                keys = sorted(k for k in ep.l7 if k.direction == direction)
                # The programs redirect only flows an L7 entry allows, judged by the ipcache, which
                # learns a new pod before this listener's address lists do. When every peer has the
                # same HTTP rules the peer match adds nothing but that lag (a new pod's first requests
                # would get 403): leave it out, and the datapath's identity decision stands (as
                # Cilium's Envoy takes the source identity from the datapath).
                uniform = len({ep.l7[k] for k in keys}) == 1
                for key in keys:
                    peer = None if uniform else peers.match(key.identity, direction)
                    ingress = direction == DIR_INGRESS
                    for i, rule in enumerate(ep.l7[key]):
                        name = f"{key.identity}/{key.proto}/{key.dport}/{key.port_prefix_len}/{i}"
                        policies[name] = {
                            "permissions": [_rule_permission(key, rule, None if ingress else peer)],
                            "principals": [peer if ingress and peer is not None else {"any": True}],
                        }
                if not policies:
                    continue
                als = inp.access_log_cluster
                if direction == DIR_EGRESS:
                    dests = [q.ip for q in pods]
                    chains[direction].append(chain(direction, p.ip, policies, als, dests))
                chains[direction].append(chain(direction, p.ip, policies, als))
        res_node: dict[str, dict[str, Message]] = {LISTENER: {}, CLUSTER: {}}
        for direction, ch in chains.items():
            if not ch:
                continue
            port = inp.ports.ingress if direction == DIR_INGRESS else inp.ports.egress
            res_node[LISTENER][listener_name(direction)] = listener(direction, addr, port, ch)
            res_node[CLUSTER][cluster_name(direction)] = cluster(direction)
        if res_node[LISTENER]:
            out[node] = res_node
    return out


def node_address(node: Mapping[str, Any]) -> str:
    """A Node's InternalIP (the address its proxy listens on; local mode: ``127.0.50.<i>``)."""
    for a in _d(node.get("status")).get("addresses") or []:
        a = _d(a)
        if a.get("type") == "InternalIP" and isinstance(a.get("address"), str):
            try:
                return str(ipaddress.IPv4Address(a["address"]))
            except ValueError:
                continue
    return ""


def ingest(inp: TranslateInput, out: Translation) -> None:
    """Pipeline step: a :class:`~.types.TranslateInput`'s policies, pods, namespaces and nodes →
    per-node resources in ``out.node_resources`` (merged with what is already there)."""
    nodes = {}
    for n in inp.of("Node"):
        name = str(_d(_d(n).get("metadata")).get("name") or "")
        if name and (addr := node_address(_d(n))):
            nodes[name] = addr
    policies = [*inp.of("CiliumNetworkPolicy"), *inp.of("CiliumClusterwideNetworkPolicy")]
    pods = list(inp.of("Pod"))
    if not nodes or not (any(has_http_rules(p) for p in policies) or any(pod_visibility(p)[0] for p in pods)):
        return
    res = l7_policy(
        L7PolicyInput(
            policies=policies,
            pods=pods,
            namespaces=list(inp.of("Namespace")),
            node_addresses=nodes,
            access_log_cluster=inp.access_log_cluster,
        )
    )
    for node, by_type in res.items():
        mine = out.node_resources.setdefault(node, {})
        for type_url, items in by_type.items():
            mine.setdefault(type_url, {}).update(items)


def has_http_rules(policy: Any) -> bool:
    """Whether a (Clusterwide)NetworkPolicy object has any ``rules.http`` (cheap, for callers that
    want to skip work when there is no L7 policy at all)."""
    obj = _d(policy)
    raw = obj.get("specs")
    specs = [_d(obj.get("spec")), *(_d(s) for s in (raw if isinstance(raw, list) else []))]
    for s in specs:
        for section in ("ingress", "egress"):
            rules = s.get(section)
            for rule in rules if isinstance(rules, list) else []:
                tps = _d(rule).get("toPorts")
                for tp in tps if isinstance(tps, list) else []:
                    if _d(_d(tp).get("rules")).get("http"):
                        return True
    return False
