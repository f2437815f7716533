"""Parse CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy objects into rules.

:func:`parse_policy` never raises on bad input: it returns a :class:`ParseResult` carrying either the
parsed policy or precise errors (``spec.ingress[0].toPorts[0].ports[0].port: "8o!" is not a port``),
so one invalid policy gets a status condition and never blocks the others. A policy with any error
is rejected whole, as Cilium rejects it.

Cilium semantics kept here (pkg/k8s/apis/cilium.io/utils, pkg/policy/api):
- A CNP's endpointSelector, and each from/toEndpoints selector that does not name
  ``io.kubernetes.pod.namespace`` (and is not a ``reserved:`` selector), is restricted to the
  policy's namespace. A CCNP is not restricted.
- A rule with no L3 peer but with toPorts/icmps applies to every peer; a rule with neither (``{}``)
  allows nothing but still makes its direction default-deny.
- ``authentication.mode``: required → 1 (spire), test-always-fail → 2, disabled → explicit 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from nodemesh.labels import RESERVED_IDS
from nodemesh.policy.labels import NS_LABEL, LabelReq, Selector
from nodemesh.policy.model import (
    AUTH_ALWAYS_FAIL,
    AUTH_NONE,
    AUTH_SPIRE,
    DIR_EGRESS,
    DIR_INGRESS,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    HTTPRule,
    PolicyRef,
)
from nodemesh.policy.parse_common import (
    Errors,
    as_list,
    as_map,
    parse_cidr,
    parse_port,
    parse_selector,
)
from nodemesh.policy.rules import (
    Enforce,
    ParsedPolicy,
    ParseResult,
    Peer,
    PortSpec,
    Rule,
)

__all__ = ["CCNP", "CNP", "KNP", "POLICY_KINDS", "parse_policy", "policy_ref"]

CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
KNP = "NetworkPolicy"
POLICY_KINDS = (CNP, CCNP, KNP)

AUTH_MODES = {"required": AUTH_SPIRE, "test-always-fail": AUTH_ALWAYS_FAIL, "disabled": AUTH_NONE}

_RESERVED_SEL = {name: Selector((LabelReq("reserved", name, "Exists"),)) for name in RESERVED_IDS}
#: Cilium's entity → selectors (pkg/policy/api/entity.go). ``cluster`` adds every pod identity.
ENTITIES: dict[str, tuple[Peer, ...]] = {
    "all": (Peer("all"),),
    "world": tuple(Peer("selector", _RESERVED_SEL[n]) for n in ("world", "world-ipv4", "world-ipv6")),
    "cluster": (
        *(
            Peer("selector", _RESERVED_SEL[n])
            for n in ("host", "remote-node", "health", "init", "unmanaged", "kube-apiserver", "ingress")
        ),
        Peer("selector", Selector((LabelReq("k8s", NS_LABEL, "Exists"),))),
    ),
    **{
        n: (Peer("selector", _RESERVED_SEL[n]),)
        for n in ("host", "remote-node", "health", "init", "unmanaged", "kube-apiserver", "ingress")
    },
}

ICMP_TYPES = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
}
_PORT_PROTOS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPV6", "ANY")
_UNSUPPORTED = (
    "fromRequires", "toRequires", "fromGroups", "toGroups", "toServices", "toFQDNs", "fromNodes",
    "toNodes", "cidrGroupRef",
)  # fmt: skip


def policy_ref(obj: Mapping[str, Any]) -> PolicyRef:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    kind = str(obj.get("kind", ""))
    ns = "" if kind == CCNP else str(meta.get("namespace") or "default")  # type: ignore[union-attr]
    return PolicyRef(kind, ns, str(meta.get("name", "")))  # type: ignore[union-attr]


def parse_policy(obj: Mapping[str, Any]) -> ParseResult:
    """Parse one policy object (a Kubernetes-shaped dict). Never raises on bad input."""
    from nodemesh.policy.parse_k8s import parse_network_policy

    ref = policy_ref(obj)
    errs = Errors()
    if ref.kind not in POLICY_KINDS:
        errs.add("kind", f"{ref.kind!r} is not a policy kind")
        return ParseResult(ref, None, tuple(errs.items))
    if not ref.name:
        errs.add("metadata.name", "is required")
    try:
        if ref.kind == KNP:
            rules, enforce, cidrs = parse_network_policy(ref, obj.get("spec"), errs)
        else:
            rules, enforce, cidrs = _parse_cilium(ref, obj, errs)
    except Exception as e:  # a parser bug must not take the engine down with it
        errs.add("", f"internal error parsing policy: {type(e).__name__}: {e}")
    if errs:
        return ParseResult(ref, None, tuple(errs.items))
    indexed = tuple(msgspec.structs.replace(r, index=i) for i, r in enumerate(rules))
    return ParseResult(ref, ParsedPolicy(ref, indexed, tuple(enforce), tuple(sorted(set(cidrs)))))


def _parse_cilium(
    ref: PolicyRef, obj: Mapping[str, Any], errs: Errors
) -> tuple[list[Rule], list[Enforce], list[str]]:
    specs: list[tuple[str, Any]] = []
    if obj.get("spec") is not None:
        specs.append(("spec", obj["spec"]))
    for i, s in enumerate(as_list(obj.get("specs"), "specs", errs)):
        specs.append((f"specs[{i}]", s))
    if not specs:
        errs.add("spec", "spec or specs is required")
    p = _CiliumParser(ref, errs)
    for path, spec in specs:
        p.rule(path, spec)
    return p.rules, p.enforce, p.cidrs


class _CiliumParser:
    def __init__(self, ref: PolicyRef, errs: Errors) -> None:
        self.ref = ref
        self.ns = ref.namespace if ref.kind == CNP else ""
        self.errs = errs
        self.rules: list[Rule] = []
        self.enforce: list[Enforce] = []
        self.cidrs: list[str] = []

    def rule(self, path: str, raw: Any) -> None:
        spec = as_map(raw, path, self.errs)
        has_ep, has_node = spec.get("endpointSelector") is not None, spec.get("nodeSelector") is not None
        if has_ep == has_node:
            self.errs.add(path, "exactly one of endpointSelector and nodeSelector is required")
            return
        if has_node and self.ref.kind == CNP:
            self.errs.add(f"{path}.nodeSelector", "is only allowed in a CiliumClusterwideNetworkPolicy")
            return
        field = "endpointSelector" if has_ep else "nodeSelector"
        subject = parse_selector(spec.get(field), f"{path}.{field}", self.errs)
        if self.ns:
            subject = subject.with_req(LabelReq("k8s", NS_LABEL, "In", (self.ns,)))
        dd = as_map(spec.get("enableDefaultDeny"), f"{path}.enableDefaultDeny", self.errs)
        for direction, allow_f, deny_f in (
            (DIR_INGRESS, "ingress", "ingressDeny"),
            (DIR_EGRESS, "egress", "egressDeny"),
        ):
            allows = as_list(spec.get(allow_f), f"{path}.{allow_f}", self.errs)
            denies = as_list(spec.get(deny_f), f"{path}.{deny_f}", self.errs)
            if (allows or denies) and dd.get(allow_f, True) is not False:
                self.enforce.append(Enforce(subject, has_node, direction))
            for i, r in enumerate(allows):
                self.section(f"{path}.{allow_f}[{i}]", r, subject, has_node, direction, deny=False)
            for i, r in enumerate(denies):
                self.section(f"{path}.{deny_f}[{i}]", r, subject, has_node, direction, deny=True)

    def section(
        self, path: str, raw: Any, subject: Selector, host: bool, direction: int, *, deny: bool
    ) -> None:
        r = as_map(raw, path, self.errs)
        pre = "from" if direction == DIR_INGRESS else "to"
        for k in _UNSUPPORTED:
            if r.get(k):
                self.errs.add(f"{path}.{k}", "is not supported by nodemesh")
        peers: list[Peer] = []
        has_l3 = False
        for i, sel in enumerate(as_list(r.get(f"{pre}Endpoints"), f"{path}.{pre}Endpoints", self.errs)):
            has_l3 = True
            peers.append(self.peer_selector(f"{path}.{pre}Endpoints[{i}]", sel))
        for i, ent in enumerate(as_list(r.get(f"{pre}Entities"), f"{path}.{pre}Entities", self.errs)):
            has_l3 = True
            if ent not in ENTITIES:
                self.errs.add(f"{path}.{pre}Entities[{i}]", f"{ent!r} is not one of {', '.join(ENTITIES)}")
                continue
            peers.extend(ENTITIES[ent])
        for i, c in enumerate(as_list(r.get(f"{pre}CIDR"), f"{path}.{pre}CIDR", self.errs)):
            has_l3 = True
            cidr = parse_cidr(c, f"{path}.{pre}CIDR[{i}]", self.errs)
            if cidr:
                self.cidrs.append(cidr)
                peers.append(Peer("cidr", cidr=cidr))
        for i, cs in enumerate(as_list(r.get(f"{pre}CIDRSet"), f"{path}.{pre}CIDRSet", self.errs)):
            has_l3 = True
            peer = self.cidr_set(f"{path}.{pre}CIDRSet[{i}]", cs)
            if peer:
                peers.append(peer)
        auth: int | None = None
        if r.get("authentication") is not None:
            a = as_map(r.get("authentication"), f"{path}.authentication", self.errs)
            mode = a.get("mode")
            if deny:
                self.errs.add(f"{path}.authentication", "is not allowed in a deny rule")
            elif mode not in AUTH_MODES:
                self.errs.add(
                    f"{path}.authentication.mode", f"{mode!r} is not one of {', '.join(AUTH_MODES)}"
                )
            else:
                auth = AUTH_MODES[mode]
        to_ports = as_list(r.get("toPorts"), f"{path}.toPorts", self.errs)
        icmps = as_list(r.get("icmps"), f"{path}.icmps", self.errs)
        if to_ports and icmps:
            self.errs.add(path, "toPorts and icmps cannot be used in the same rule")
            return
        if not has_l3 and (to_ports or icmps):
            peers = [Peer("all")]
        groups: list[tuple[tuple[PortSpec, ...], tuple[HTTPRule, ...] | None]] = []
        for i, tp in enumerate(to_ports):
            groups.append(self.port_rule(f"{path}.toPorts[{i}]", tp, deny))
        if icmps:
            groups.append((self.icmps(f"{path}.icmps", icmps), None))
        if not groups:
            groups.append(((), None))
        uniq = tuple(sorted(set(peers)))
        for ports, l7 in groups:
            self.rules.append(Rule(self.ref, subject, host, direction, deny, uniq, ports, auth, l7))

    def peer_selector(self, path: str, raw: Any) -> Peer:
        sel = parse_selector(raw, path, self.errs)
        if self.ns and not sel.has_key(NS_LABEL) and not sel.has_source("reserved"):
            sel = sel.with_req(LabelReq("k8s", NS_LABEL, "In", (self.ns,)))
        if not sel.reqs:
            return Peer("all")  # CCNP `{}`: every identity, Cilium's wildcard selector
        return Peer("selector", sel)

    def cidr_set(self, path: str, raw: Any) -> Peer | None:
        m = as_map(raw, path, self.errs)
        if m.get("cidrGroupRef"):
            self.errs.add(f"{path}.cidrGroupRef", "is not supported by nodemesh")
            return None
        cidr = parse_cidr(m.get("cidr"), f"{path}.cidr", self.errs)
        excepts = []
        for i, e in enumerate(as_list(m.get("except"), f"{path}.except", self.errs)):
            ex = parse_cidr(e, f"{path}.except[{i}]", self.errs)
            if ex and cidr and not _within(ex, cidr):
                self.errs.add(f"{path}.except[{i}]", f"{ex} is not inside {cidr}")
            elif ex:
                excepts.append(ex)
        if not cidr:
            return None
        self.cidrs.extend([cidr, *excepts])
        return Peer("cidr", cidr=cidr, excepts=tuple(sorted(set(excepts))))

    def port_rule(
        self, path: str, raw: Any, deny: bool
    ) -> tuple[tuple[PortSpec, ...], tuple[HTTPRule, ...] | None]:
        m = as_map(raw, path, self.errs)
        for k in ("terminatingTLS", "originatingTLS", "serverNames", "listener"):
            if m.get(k):
                self.errs.add(f"{path}.{k}", "is not supported by nodemesh")
        ports: list[PortSpec] = []
        for i, item in enumerate(as_list(m.get("ports"), f"{path}.ports", self.errs)):
            ports.extend(
                parse_port(item, f"{path}.ports[{i}]", self.errs, default_proto="ANY", allowed=_PORT_PROTOS)
            )
        rules = as_map(m.get("rules"), f"{path}.rules", self.errs)
        if not rules:
            return tuple(sorted(set(ports))), None
        for k in rules:
            if k != "http":
                self.errs.add(f"{path}.rules.{k}", "is not supported by nodemesh (only http)")
        if deny:
            self.errs.add(f"{path}.rules", "L7 rules are not allowed in a deny rule")
        if not ports or any(p.port == 0 and not p.name for p in ports):
            self.errs.add(f"{path}.rules", "L7 rules need a port")
        if any(p.proto not in (PROTO_TCP, PROTO_ANY) for p in ports):
            self.errs.add(f"{path}.rules", "L7 rules need TCP ports")
        # L7 runs over TCP: ANY becomes TCP so the redirect entry is one key, not three.
        tcp_ports = tuple(sorted({PortSpec(PROTO_TCP, p.port, p.end_port, p.name) for p in ports}))
        http: list[HTTPRule] = []
        for i, h in enumerate(as_list(rules.get("http"), f"{path}.rules.http", self.errs)):
            http.append(self.http_rule(f"{path}.rules.http[{i}]", h))
        return tcp_ports, tuple(sorted(set(http))) or (HTTPRule(),)

    def http_rule(self, path: str, raw: Any) -> HTTPRule:
        m = as_map(raw, path, self.errs)
        vals: dict[str, str] = {}
        for k in ("method", "path", "host"):
            v = m.get(k, "")
            if not isinstance(v, str):
                self.errs.add(f"{path}.{k}", "must be a string")
                v = ""
            vals[k] = v
        headers = as_list(m.get("headers"), f"{path}.headers", self.errs)
        if not all(isinstance(h, str) for h in headers):
            self.errs.add(f"{path}.headers", "must be strings")
            headers = []
        if m.get("headerMatches"):
            self.errs.add(f"{path}.headerMatches", "is not supported by nodemesh")
        return HTTPRule(vals["method"], vals["path"], vals["host"], tuple(headers))

    def icmps(self, path: str, raw: list[Any]) -> tuple[PortSpec, ...]:
        out: set[PortSpec] = set()
        for i, icmp in enumerate(raw):
            fields = as_list(
                as_map(icmp, f"{path}[{i}]", self.errs).get("fields"), f"{path}[{i}].fields", self.errs
            )
            for j, f in enumerate(fields):
                fp = f"{path}[{i}].fields[{j}]"
                fm = as_map(f, fp, self.errs)
                family = fm.get("family", "IPv4")
                if family not in ("IPv4", "IPv6"):
                    self.errs.add(f"{fp}.family", f"{family!r} is not IPv4 or IPv6")
                    continue
                t = fm.get("type")
                if isinstance(t, str) and t in ICMP_TYPES and family == "IPv4":
                    t = ICMP_TYPES[t]
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 255:
                    self.errs.add(f"{fp}.type", f"{t!r} is not an ICMP type")
                    continue
                out.add(PortSpec(PROTO_ICMP if family == "IPv4" else PROTO_ICMPV6, t, icmp_type=True))
        return tuple(sorted(out))


def _within(inner: str, outer: str) -> bool:
    import ipaddress

    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
