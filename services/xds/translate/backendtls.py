"""BackendTLSPolicy (gateway.networking.k8s.io/v1alpha3): TLS from the gateway to a Service, fail-closed.

Cilium 1.16 has no BackendTLSPolicy and later versions fell back to plaintext when one was invalid
(research §7, cilium#31352/#48307). Here a valid policy gives the Service's cluster an
``UpstreamTlsContext`` (SNI = ``validation.hostname``, the peer must present that DNS name, trusted CAs
from the ``ca.crt`` of the referenced ConfigMaps, or the system bundle for
``wellKnownCACertificates: System``); an invalid one makes every route to that Service answer 500
instead of ever sending plaintext. ``targetRefs[].sectionName`` limits a policy to one Service port
(by port name). Status: ``status.ancestors`` per Gateway whose routes use the Service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodemesh.messages.k8s import StatusPatch

from .index import GW_GROUP, Index, as_dict, as_list, meta
from .status import condition, keep_transition_times
from .types import TranslateInput, Translation

__all__ = ["SYSTEM_CA_BUNDLE", "BackendTLS", "policies", "policy_status"]

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass
class BackendTLS:
    policy: str  # "<ns>/<name>"
    hostname: str = ""
    ca_pem: bytes = b""
    system: bool = False
    error: tuple[str, str, str] | None = None  # (condition type, reason, message) when invalid
    obj: dict[str, Any] = field(default_factory=dict)


def _policy(idx: Index, pol: dict[str, Any]) -> BackendTLS:
    m = meta(pol)
    ns = str(m.get("namespace", ""))
    out = BackendTLS(policy=f"{ns}/{m.get('name', '')}", obj=pol)
    val = as_dict(as_dict(pol.get("spec")).get("validation"))
    out.hostname = str(val.get("hostname") or "")
    if not out.hostname:
        out.error = ("Accepted", "Invalid", "validation.hostname is required")
        return out
    refs = as_list(val.get("caCertificateRefs"))
    if val.get("wellKnownCACertificates") == "System" and not refs:
        out.system = True
        return out
    if not refs:
        out.error = ("Accepted", "Invalid", "no caCertificateRefs and no wellKnownCACertificates")
        return out
    pems: list[bytes] = []
    for ref in refs:
        ref = as_dict(ref)
        if ref.get("group", "") not in ("", "core") or ref.get("kind") != "ConfigMap":
            out.error = (
                "ResolvedRefs",
                "InvalidKind",
                f"caCertificateRef {ref.get('kind')!r} is not a ConfigMap",
            )
            return out
        cm = idx.get("ConfigMap", ns, str(ref.get("name", "")))
        ca = str(as_dict((cm or {}).get("data")).get("ca.crt", ""))
        if cm is None or "-----BEGIN CERTIFICATE-----" not in ca:
            out.error = (
                "ResolvedRefs",
                "InvalidCACertificateRef",
                f"ConfigMap {ns}/{ref.get('name')} has no ca.crt",
            )
            return out
        pems.append(ca.encode())
    out.ca_pem = b"\n".join(pems)
    return out


def policies(idx: Index) -> dict[tuple[str, str, str], BackendTLS]:
    """``(namespace, service, port name or "")`` → the policy for it (the oldest wins a conflict)."""
    out: dict[tuple[str, str, str], BackendTLS] = {}
    ordered = sorted(idx.all("BackendTLSPolicy"), key=lambda p: str(meta(p).get("creationTimestamp", "")))
    for pol in ordered:
        bt = _policy(idx, pol)
        ns = str(meta(pol).get("namespace", ""))
        for t in as_list(as_dict(pol.get("spec")).get("targetRefs")):
            t = as_dict(t)
            if t.get("group", "") not in ("", "core") or t.get("kind") != "Service":
                continue
            out.setdefault((ns, str(t.get("name", "")), str(t.get("sectionName") or "")), bt)
    return out


def policy_status(
    table: dict[tuple[str, str, str], BackendTLS],
    gateways_of: dict[tuple[str, str], set[str]],
    inp: TranslateInput,
    out: Translation,
    controller: str,
) -> None:
    done: set[str] = set()
    for bt in table.values():
        if bt.policy in done:
            continue
        done.add(bt.policy)
        m = meta(bt.obj)
        gen = int(m.get("generation") or 1) if isinstance(m.get("generation"), int) else 1
        targets = {(n, sv) for (n, sv, _), p in table.items() if p is bt}
        ancestors = sorted({g for key in targets for g in gateways_of.get(key, set())})
        old = {
            (
                as_dict(a.get("ancestorRef")).get("namespace"),
                as_dict(a.get("ancestorRef")).get("name"),
            ): a.get("conditions")
            for a in as_list(as_dict(bt.obj.get("status")).get("ancestors"))
            if isinstance(a, dict)
        }
        entries = []
        for g in ancestors:
            gns, gname = g.split("/", 1)
            if bt.error is None:
                conds = [
                    condition("Accepted", True, "Accepted", "Policy accepted", gen, inp.now),
                    condition("ResolvedRefs", True, "ResolvedRefs", "Resolved", gen, inp.now),
                ]
            elif bt.error[0] == "Accepted":
                conds = [condition("Accepted", False, bt.error[1], bt.error[2], gen, inp.now)]
            else:
                conds = [
                    condition("Accepted", False, "NoValidCACertificate", bt.error[2], gen, inp.now),
                    condition("ResolvedRefs", False, bt.error[1], bt.error[2], gen, inp.now),
                ]
            entries.append(
                {
                    "ancestorRef": {"group": GW_GROUP, "kind": "Gateway", "namespace": gns, "name": gname},
                    "controllerName": controller,
                    "conditions": keep_transition_times(conds, old.get((gns, gname))),
                }
            )
        out.statuses.append(
            StatusPatch(
                kind="BackendTLSPolicy",
                api_version=f"{GW_GROUP}/v1alpha3",
                namespace=str(m.get("namespace", "")),
                name=str(m.get("name", "")),
                status={"ancestors": entries},
                field_manager="nodemesh-xds",
                uid=str(m.get("uid", "")),
            )
        )
