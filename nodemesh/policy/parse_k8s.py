"""Parse a Kubernetes NetworkPolicy (networking.k8s.io/v1) into rules, the way Cilium translates it.

- ``podSelector`` selects endpoints in the policy's namespace.
- ``policyTypes`` absent: Ingress always, Egress only if ``egress`` is present (non-empty); a listed
  type with no rules is default-deny in that direction.
- A peer is ``podSelector`` (same namespace), ``namespaceSelector`` (pods of matching namespaces,
  via the ``io.cilium.k8s.namespace.labels.*`` identity labels), both (ANDed), or ``ipBlock``.
- A rule without ``from``/``to`` matches every peer (world included); without ``ports``, every port.
- ``ports``: protocol TCP (default) / UDP / SCTP, numeric or named port, ``endPort``.
"""

from __future__ import annotations

from typing import Any

from nodemesh.policy.labels import NS_LABEL, NS_LABELS_PREFIX, LabelReq, Selector
from nodemesh.policy.model import DIR_EGRESS, DIR_INGRESS, PolicyRef
from nodemesh.policy.parse_common import (
    Errors,
    as_list,
    as_map,
    parse_cidr,
    parse_port,
    parse_selector,
)
from nodemesh.policy.rules import Enforce, Peer, PortSpec, Rule

__all__ = ["parse_network_policy"]

_NS_EXISTS = LabelReq("k8s", NS_LABEL, "Exists")


def parse_network_policy(
    ref: PolicyRef, raw_spec: Any, errs: Errors
) -> tuple[list[Rule], list[Enforce], list[str]]:
    spec = as_map(raw_spec, "spec", errs)
    if raw_spec is None:
        errs.add("spec", "is required")
    if spec.get("podSelector") is None:
        errs.add("spec.podSelector", "is required")
    subject = parse_selector(spec.get("podSelector"), "spec.podSelector", errs, source="k8s")
    subject = subject.with_req(LabelReq("k8s", NS_LABEL, "In", (ref.namespace,)))
    types_raw = spec.get("policyTypes")
    if types_raw is None:
        types = {"Ingress"} | ({"Egress"} if spec.get("egress") else set())
    else:
        types = set()
        for i, t in enumerate(as_list(types_raw, "spec.policyTypes", errs)):
            if t not in ("Ingress", "Egress"):
                errs.add(f"spec.policyTypes[{i}]", f"{t!r} is not Ingress or Egress")
            else:
                types.add(t)
    rules: list[Rule] = []
    enforce: list[Enforce] = []
    cidrs: list[str] = []
    for direction, field, peer_f, ptype in (
        (DIR_INGRESS, "ingress", "from", "Ingress"),
        (DIR_EGRESS, "egress", "to", "Egress"),
    ):
        sections = as_list(spec.get(field), f"spec.{field}", errs)
        if ptype not in types:
            continue  # rules of a direction not in policyTypes are ignored, as Kubernetes says
        enforce.append(Enforce(subject, False, direction))
        for i, sec in enumerate(sections):
            path = f"spec.{field}[{i}]"
            m = as_map(sec, path, errs)
            peers: list[Peer] = []
            raw_peers = as_list(m.get(peer_f), f"{path}.{peer_f}", errs)
            for j, p in enumerate(raw_peers):
                peer = _peer(ref, f"{path}.{peer_f}[{j}]", p, errs, cidrs)
                if peer:
                    peers.append(peer)
            if not raw_peers:
                peers = [Peer("all")]
            ports: list[PortSpec] = []
            for j, item in enumerate(as_list(m.get("ports"), f"{path}.ports", errs)):
                ports.extend(
                    parse_port(item, f"{path}.ports[{j}]", errs, default_proto="TCP",
                               allowed=("TCP", "UDP", "SCTP"))
                )  # fmt: skip
            rules.append(
                Rule(
                    ref,
                    subject,
                    False,
                    direction,
                    False,
                    tuple(sorted(set(peers))),
                    tuple(sorted(set(ports))),
                )
            )
    return rules, enforce, cidrs


def _peer(ref: PolicyRef, path: str, raw: Any, errs: Errors, cidrs: list[str]) -> Peer | None:
    m = as_map(raw, path, errs)
    pod, ns, block = m.get("podSelector"), m.get("namespaceSelector"), m.get("ipBlock")
    if block is not None:
        if pod is not None or ns is not None:
            errs.add(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
            return None
        b = as_map(block, f"{path}.ipBlock", errs)
        cidr = parse_cidr(b.get("cidr"), f"{path}.ipBlock.cidr", errs)
        excepts: list[str] = []
        for i, e in enumerate(as_list(b.get("except"), f"{path}.ipBlock.except", errs)):
            ex = parse_cidr(e, f"{path}.ipBlock.except[{i}]", errs)
            if ex and cidr and not _within(ex, cidr):
                errs.add(f"{path}.ipBlock.except[{i}]", f"{ex} is not inside {cidr}")
            elif ex:
                excepts.append(ex)
        if not cidr:
            return None
        cidrs.extend([cidr, *excepts])
        return Peer("cidr", cidr=cidr, excepts=tuple(sorted(set(excepts))))
    if pod is None and ns is None:
        errs.add(path, "one of podSelector, namespaceSelector or ipBlock is required")
        return None
    sel = Selector()
    if pod is not None:
        sel = parse_selector(pod, f"{path}.podSelector", errs, source="k8s")
    if ns is None:
        sel = sel.with_req(LabelReq("k8s", NS_LABEL, "In", (ref.namespace,)))
    else:
        nsel = parse_selector(
            ns, f"{path}.namespaceSelector", errs, source="k8s", key_prefix=NS_LABELS_PREFIX
        )
        for r in (*nsel.reqs, _NS_EXISTS):
            sel = sel.with_req(r)
    return Peer("selector", sel)


def _within(inner: str, outer: str) -> bool:
    import ipaddress

    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
