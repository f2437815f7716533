"""Ingestion of GatewayClasses and Gateways: which are ours, listener validation, Gateway status.

Routes attach afterwards (:mod:`.ingest_routes`); the Gateway's status is written last because
``attachedRoutes`` depends on them. Reasons follow the Gateway API spec (and research §5.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodemesh.lbservices import gateway_service_name
from nodemesh.messages.k8s import StatusPatch

from .frontend_tls import backend_client_certificate, frontend_validation
from .index import GW_GROUP, Index, as_dict, as_int, as_list, meta, valid_tls_secret
from .status import condition, keep_transition_times
from .types import GatewayInfo, Obj, TranslateInput, Translation

__all__ = ["GatewayListener", "GatewayState", "gateway_service_name", "gateway_status", "ingest_gateways"]

FIELD_MANAGER = "nodemesh-xds"

# protocol → route kinds it may carry
_KINDS_FOR = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
}


@dataclass
class GatewayListener:
    name: str
    port: int
    protocol: str
    hostname: str  # "" = any
    accepted: bool = True
    accepted_reason: str = "Accepted"
    accepted_message: str = "Listener Accepted"
    resolved: bool = True
    resolved_reason: str = "ResolvedRefs"
    resolved_message: str = "Resolved Refs"
    kinds: list[str] = field(default_factory=list)  # supported kinds (after validation)
    allowed_from: str = "Same"
    allowed_selector: Any = None
    tls_mode: str = ""
    secrets: list[tuple[str, str]] = field(default_factory=list)  # (ns, name) of valid cert Secrets
    conflicted: str = ""  # reason when Conflicted=True
    attached: int = 0
    # frontend_tls.ClientValidation of a TLS-terminating listener (Gateway spec.tls.frontend), if any.
    client_validation: Any = None


@dataclass
class GatewayState:
    obj: Obj
    namespace: str
    name: str
    generation: int
    address: str
    listeners: list[GatewayListener]
    # (reason, message) when the whole Gateway is refused (Accepted=False, no Envoy config).
    refused: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}/cilium-gateway-{self.name}"


def _our_classes(idx: Index, inp: TranslateInput, out: Translation) -> set[str]:
    ours: set[str] = set()
    for gc in idx.all("GatewayClass"):
        spec = as_dict(gc.get("spec"))
        if spec.get("controllerName") not in inp.controller_names:
            continue
        m = meta(gc)
        gen = as_int(m.get("generation"), 1)
        old = (as_dict(gc.get("status"))).get("conditions")
        if spec.get("parametersRef"):
            # nodemesh has no parameters kind: refuse rather than ignore what the class asks for.
            msg = "nodemesh takes no GatewayClass parameters (parametersRef is not supported)"
            conds = [condition("Accepted", False, "InvalidParameters", msg, gen, inp.now)]
        else:
            ours.add(m.get("name", ""))
            conds = [condition("Accepted", True, "Accepted", "Valid GatewayClass", gen, inp.now)]
        out.statuses.append(
            StatusPatch(
                kind="GatewayClass",
                api_version=f"{GW_GROUP}/v1",
                namespace="",
                name=m.get("name", ""),
                status={"conditions": keep_transition_times(conds, old)},
                field_manager=FIELD_MANAGER,
                uid=m.get("uid", ""),
            )
        )
    return ours


def _listener(idx: Index, gw_ns: str, raw: Any) -> GatewayListener:
    raw = raw if isinstance(raw, dict) else {}
    proto = str(raw.get("protocol", ""))
    lst = GatewayListener(
        name=str(raw.get("name", "")),
        port=as_int(raw.get("port")),
        protocol=proto,
        hostname=str(raw.get("hostname") or ""),
    )
    allowed = as_dict(raw.get("allowedRoutes"))
    ns_sel = as_dict(allowed.get("namespaces"))
    lst.allowed_from = str(ns_sel.get("from") or "Same")
    lst.allowed_selector = ns_sel.get("selector")
    if not 0 < lst.port < 65536:
        lst.accepted, lst.accepted_reason = False, "PortUnavailable"
        lst.accepted_message = f"Port {raw.get('port')!r} is not a valid port"
        return lst
    if proto not in _KINDS_FOR:
        lst.accepted, lst.accepted_reason = False, "UnsupportedProtocol"
        lst.accepted_message = f"Protocol {proto!r} is not supported"
        return lst
    valid_kinds = _KINDS_FOR[proto]
    asked = allowed.get("kinds")
    if asked:
        kinds: list[str] = []
        bad = False
        for k in asked:
            if isinstance(k, dict) and k.get("group", GW_GROUP) == GW_GROUP and k.get("kind") in valid_kinds:
                kinds.append(str(k["kind"]))
            else:
                bad = True
        lst.kinds = list(dict.fromkeys(kinds))
        if bad:
            lst.resolved, lst.resolved_reason = False, "InvalidRouteKinds"
            lst.resolved_message = "Invalid route kinds in allowedRoutes"
    else:
        lst.kinds = list(valid_kinds)
    tls = as_dict(raw.get("tls"))
    lst.tls_mode = str(tls.get("mode") or "Terminate")
    if proto == "HTTPS" or (proto == "TLS" and lst.tls_mode == "Terminate"):
        refs = as_list(tls.get("certificateRefs"))
        if not refs:
            lst.resolved, lst.resolved_reason = False, "InvalidCertificateRef"
            lst.resolved_message = "No certificateRefs"
        for ref in refs:
            reason = _check_cert(idx, gw_ns, ref, lst)
            if reason:
                # RefNotPermitted is reported over InvalidCertificateRef only when it is the sole problem.
                if lst.resolved or reason == "InvalidCertificateRef":
                    lst.resolved, lst.resolved_reason = False, reason
                    lst.resolved_message = f"certificateRef {ref!r}: {reason}"
    if proto == "TLS" and lst.tls_mode not in ("Passthrough", "Terminate"):
        lst.accepted, lst.accepted_reason = False, "UnsupportedValue"
    return lst


def _check_cert(idx: Index, gw_ns: str, ref: Any, lst: GatewayListener) -> str:
    if not isinstance(ref, dict):
        return "InvalidCertificateRef"
    if ref.get("group", "") not in ("", "core") or ref.get("kind", "Secret") != "Secret":
        return "InvalidCertificateRef"
    ns = str(ref.get("namespace") or gw_ns)
    name = str(ref.get("name", ""))
    if ns != gw_ns and not idx.grant_allows(GW_GROUP, "Gateway", gw_ns, "", "Secret", ns, name):
        return "RefNotPermitted"
    secret = idx.get("Secret", ns, name)
    if secret is None or not valid_tls_secret(secret):
        return "InvalidCertificateRef"
    lst.secrets.append((ns, name))
    return ""


def _apply_frontend_tls(idx: Index, gw_ns: str, spec: dict[str, Any], lst: GatewayListener) -> None:
    """Client-certificate validation (spec.tls.frontend) of a TLS-terminating listener, or its refusal."""
    if not lst.accepted or not (
        lst.protocol == "HTTPS" or (lst.protocol == "TLS" and lst.tls_mode == "Terminate")
    ):
        return
    res = frontend_validation(idx, gw_ns, spec, lst.port)
    lst.client_validation = res.validation
    if res.problem is not None and lst.resolved:
        lst.resolved, lst.resolved_reason = False, res.problem[0]
        lst.resolved_message = res.problem[1]
    if res.no_valid_ca:
        # Fail closed: without a usable CA the listener would accept clients it was told to verify.
        lst.accepted, lst.accepted_reason = False, "NoValidCACertificate"
        lst.accepted_message = res.problem[1] if res.problem else "No valid CA certificate"


def _conflicts(listeners: list[GatewayListener]) -> None:
    by_port: dict[int, list[GatewayListener]] = {}
    for lst in listeners:
        if lst.accepted:
            by_port.setdefault(lst.port, []).append(lst)
    for group in by_port.values():
        families = {
            "TCP" if x.protocol == "TCP" else "HTTP" if x.protocol == "HTTP" else "TLS" for x in group
        }
        if len(families) > 1:
            for x in group:
                x.conflicted = "ProtocolConflict"
            continue
        seen: dict[tuple[str, str], GatewayListener] = {}
        for x in group:
            k = (x.protocol, x.hostname)
            if k in seen:
                x.conflicted = seen[k].conflicted = "HostnameConflict"
            seen[k] = x


def ingest_gateways(idx: Index, inp: TranslateInput, out: Translation) -> list[GatewayState]:
    ours = _our_classes(idx, inp, out)
    states: list[GatewayState] = []
    for gw in idx.all("Gateway"):
        spec = as_dict(gw.get("spec"))
        if str(spec.get("gatewayClassName")) not in ours:
            continue
        m = meta(gw)
        ns, name = m.get("namespace", ""), m.get("name", "")
        listeners = [_listener(idx, ns, raw) for raw in as_list(spec.get("listeners"))]
        for lst in listeners:
            _apply_frontend_tls(idx, ns, spec, lst)
        _conflicts(listeners)
        states.append(
            GatewayState(
                obj=gw,
                namespace=ns,
                name=name,
                generation=as_int(m.get("generation"), 1),
                address=idx.lb_address(ns, gateway_service_name(name)),
                listeners=listeners,
                refused=_refusal(spec),
            )
        )
    return states


def _refusal(spec: dict[str, Any]) -> tuple[str, str] | None:
    if as_dict(spec.get("infrastructure")).get("parametersRef"):
        return "InvalidParameters", "nodemesh takes no Gateway parameters (infrastructure.parametersRef)"
    for a in as_list(spec.get("addresses")):
        kind = str(as_dict(a).get("type") or "IPAddress")
        value = str(as_dict(a).get("value") or "")
        if kind != "IPAddress":
            # LB-IPAM hands out IP addresses only; a Hostname or NamedAddress cannot be honoured.
            return "UnsupportedAddress", f"address type {kind!r} is not supported (IPAddress only)"
        if value and _address_type(value) != "IPAddress":
            return "UnsupportedAddress", f"address {value!r} is not an IP address"
    if backend_client_certificate(spec) is not None:
        # Backend clusters are shared by every Gateway routing to a Service, so a per-Gateway client
        # certificate cannot be attached to them: refuse the Gateway rather than connect without it.
        return "UnsupportedValue", "spec.tls.backend.clientCertificateRef is not supported by nodemesh"
    return None


def _address_type(address: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "Hostname"
    return "IPAddress"


def usable(lst: GatewayListener) -> bool:
    """Whether a listener gets Envoy config (accepted, not conflicted)."""
    return lst.accepted and not lst.conflicted


def gateway_status(st: GatewayState, inp: TranslateInput, out: Translation) -> None:
    gen, now = st.generation, inp.now
    old_status = as_dict(st.obj.get("status"))
    old_listeners = {
        x.get("name"): x.get("conditions")
        for x in as_list(old_status.get("listeners"))
        if isinstance(x, dict)
    }
    lstatus = []
    for lst in st.listeners:
        conds = [
            condition("Accepted", lst.accepted, lst.accepted_reason, lst.accepted_message, gen, now),
            condition("ResolvedRefs", lst.resolved, lst.resolved_reason, lst.resolved_message, gen, now),
            condition(
                "Conflicted",
                bool(lst.conflicted),
                lst.conflicted or "NoConflicts",
                "Listener conflicts with another" if lst.conflicted else "No conflicts",
                gen,
                now,
            ),
        ]
        lstatus.append(
            {
                "name": lst.name,
                "supportedKinds": [{"group": GW_GROUP, "kind": k} for k in lst.kinds] if lst.accepted else [],
                "attachedRoutes": lst.attached,
                "conditions": keep_transition_times(conds, old_listeners.get(lst.name)),
            }
        )
    n_ok = sum(1 for x in st.listeners if x.accepted)
    if st.refused:
        acc = condition("Accepted", False, st.refused[0], st.refused[1], gen, now)
    elif st.listeners and n_ok == 0:
        acc = condition("Accepted", False, "ListenersNotValid", "No listener is valid", gen, now)
    elif n_ok < len(st.listeners) or any(x.conflicted for x in st.listeners):
        acc = condition("Accepted", True, "ListenersNotValid", "Some listeners are not valid", gen, now)
    else:
        acc = condition("Accepted", True, "Accepted", "Gateway successfully scheduled", gen, now)
    status: dict[str, Any] = {
        "conditions": keep_transition_times([acc], old_status.get("conditions")),
        "listeners": lstatus,
        "addresses": [{"type": _address_type(st.address), "value": st.address}] if st.address else [],
    }
    m = meta(st.obj)
    out.statuses.append(
        StatusPatch(
            kind="Gateway",
            api_version=f"{GW_GROUP}/v1",
            namespace=st.namespace,
            name=st.name,
            status=status,
            field_manager=FIELD_MANAGER,
            uid=m.get("uid", ""),
        )
    )
    info = out.gateways.get(st.key) or GatewayInfo(st.namespace, st.name, gen, st.address)
    info.listeners = {x.name: usable(x) and x.resolved and not st.refused for x in st.listeners}
    info.accepted = acc["status"] == "True"
    info.status_patch_index = len(out.statuses) - 1
    out.gateways[st.key] = info
