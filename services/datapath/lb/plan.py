"""Services + EndpointSlices → frontend plans, as kube-proxy / Cilium's service manager derive them.

Pure: objects in, :class:`~services.datapath.lb.model.FrontendPlan` per frontend out, plus errors
for input that cannot be served (never an exception). What is translated:

- ``spec.clusterIPs`` with each port (TCP, UDP), ``spec.externalIPs`` with each port, LoadBalancer
  ``status.loadBalancer.ingress[].ip`` with each port, and for NodePort / LoadBalancer Services every node's
  address with ``nodePort``. Headless (``clusterIP: None``) and ExternalName Services are not
  load-balanced (kube-proxy skips them too); neither are Services whose traffic the node's Envoy
  serves (Gateway and Ingress Services by their labels): their addresses are Envoy's listeners, so
  the socket must reach them untranslated.
- ``service.cilium.io/lb-l7: enabled`` (:mod:`nodemesh.lbl7`): each TCP port's ClusterIP, externalIP
  and NodePort frontends get ONE backend, the client's node's Envoy listener (router IP : the port
  ``PlanContext.l7_ports`` assigns), flagged ``F_L7``: Envoy balances per request. LoadBalancer
  ingress IPs stay untranslated (Envoy listens there itself); UDP ports are load-balanced as usual.
- Backends come from the Service's EndpointSlices (label ``kubernetes.io/service-name``, IPv4):
  the slice port with the Service port's name and protocol gives the backend port, so a named
  ``targetPort`` resolves per backend. Ready endpoints are used; when none is ready, endpoints that
  are serving and terminating (kube-proxy's fallback); otherwise none (the frontend refuses).
- Traffic policy: ``internalTrafficPolicy: Local`` narrows ClusterIP frontends to backends on the
  node the plan is for (the client's node). ``externalTrafficPolicy: Local`` narrows a NodePort
  frontend on node N's address to N's backends — what a client reaching N sees — and LoadBalancer /
  externalIP frontends to the client's node's backends (the load balancer's choice of node cannot
  be simulated).
- ``sessionAffinity: ClientIP`` with ``sessionAffinityConfig.clientIP.timeoutSeconds`` (10800 s
  default).

Two Services claiming one frontend: the first by (namespace, name) keeps it; the other gets an error.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodemesh import lbl7
from services.datapath.lb.model import (
    BE_ACTIVE,
    BE_TERMINATING,
    F_CLUSTER_IP,
    F_EXTERNAL_IP,
    F_LOAD_BALANCER,
    F_NODE_PORT,
    PROTO_NUMBERS,
    Backend,
    Frontend,
    FrontendPlan,
    ServiceRef,
)

__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "ENVOY_SERVED_LABELS",
    "LB_L7_ANNOTATION",
    "SERVICE_NAME_LABEL",
    "EndpointInfo",
    "Plan",
    "PlanContext",
    "ServicePlan",
    "endpoints_of",
    "merge",
    "plan_all",
    "plan_service",
    "slices_by_service",
]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LB_L7_ANNOTATION = "service.cilium.io/lb-l7"
# Services the node's Envoy serves (local API server's gateway / ingress controllers, Cilium's names)
ENVOY_SERVED_LABELS = (
    "io.cilium.gateway/owning-gateway",
    "ingress.cilium.io/owning-ingress",
    "cilium.io/ingress",  # also on the shared (not owned) Ingress Service
)
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as Kubernetes defaults ClientIP timeoutSeconds
MAX_AFFINITY_TIMEOUT = 86400


@dataclass(frozen=True)
class PlanContext:
    node: str  # the node whose maps the plan fills (its pods are the clients)
    node_addresses: Mapping[str, str] = field(default_factory=dict)  # node name → IPv4 (NodePorts)
    # lb-l7: this node's pod CIDR (its router IP is Envoy's address) and the listener ports
    pod_cidr: str = ""
    l7_ports: Mapping[lbl7.PortKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointInfo:
    backend: Backend
    node: str
    ready: bool
    serving: bool
    terminating: bool


@dataclass
class ServicePlan:
    """One Service's frontends (empty when it is not load-balanced) and what was wrong with it."""

    frontends: dict[Frontend, FrontendPlan] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""  # why the Service is not load-balanced ("" = it is)


@dataclass
class Plan:
    frontends: dict[Frontend, FrontendPlan] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _ipv4(v: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(v)))
    except ValueError:
        return ""


def _port(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 else 0


def slices_by_service(slices: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(namespace, service name) → its EndpointSlices."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for es in slices:
        meta = _dict(es.get("metadata"))
        svc = _dict(meta.get("labels")).get(SERVICE_NAME_LABEL)
        if isinstance(svc, str) and svc:
            out.setdefault((str(meta.get("namespace") or "default"), svc), []).append(es)
    return out


def endpoints_of(port_name: str, proto: str, slices: Iterable[dict[str, Any]]) -> list[EndpointInfo]:
    """The endpoints serving one Service port, deduplicated by backend (best condition wins)."""
    best: dict[Backend, EndpointInfo] = {}
    proto_n = PROTO_NUMBERS[proto]
    for es in sorted(slices, key=lambda s: str(_dict(s.get("metadata")).get("name", ""))):
        if es.get("addressType", "IPv4") != "IPv4":
            continue
        target = 0
        for p in _list(es.get("ports")):
            p = _dict(p)
            if str(p.get("name") or "") == port_name and str(p.get("protocol") or "TCP") == proto:
                target = _port(p.get("port"))
                break
        if not target:
            continue  # this slice has no endpoints for the port (or a port without a number)
        for ep in _list(es.get("endpoints")):
            ep = _dict(ep)
            addrs = _list(ep.get("addresses"))
            addr = _ipv4(addrs[0]) if addrs else ""
            if not addr:
                continue
            cond = _dict(ep.get("conditions"))
            # nil conditions: ready → true, serving → ready, terminating → false (the API's meaning)
            ready = cond.get("ready") is not False
            serving = cond.get("serving") is not False if "serving" in cond else ready
            terminating = cond.get("terminating") is True
            info = EndpointInfo(
                Backend(addr, target, proto_n), str(ep.get("nodeName") or ""), ready, serving, terminating
            )
            old = best.get(info.backend)
            if old is None or _rank(info) > _rank(old):
                best[info.backend] = info
    return [best[b] for b in sorted(best)]


def _rank(e: EndpointInfo) -> int:
    return 2 if e.ready else 1 if e.serving else 0


def _select(eps: list[EndpointInfo], node: str | None) -> tuple[list[EndpointInfo], int]:
    """The endpoints to use (ready ones; else serving+terminating, as kube-proxy), and their state."""
    if node is not None:
        eps = [e for e in eps if e.node == node]
    ready = [e for e in eps if e.ready and not e.terminating]
    if ready:
        return ready, BE_ACTIVE
    return [e for e in eps if e.serving and e.terminating], BE_TERMINATING


def _envoy_served(meta: dict[str, Any]) -> bool:
    labels = _dict(meta.get("labels"))
    return any(k in labels for k in ENVOY_SERVED_LABELS)


def plan_service(svc: dict[str, Any], slices: list[dict[str, Any]], ctx: PlanContext) -> ServicePlan:
    """The frontends of one Service (as if no other Service claimed any of them)."""
    out = ServicePlan()
    meta, spec = _dict(svc.get("metadata")), _dict(svc.get("spec"))
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    where = f"Service {ns}/{name}"
    svc_type = str(spec.get("type") or "ClusterIP")
    cluster_ips = [str(x) for x in _list(spec.get("clusterIPs"))] or [str(spec.get("clusterIP") or "")]
    if svc_type == "ExternalName":
        out.skipped = "ExternalName"
        return out
    if "None" in cluster_ips:
        out.skipped = "headless"
        return out
    if _envoy_served(meta):
        out.skipped = "served by the node's Envoy"
        return out
    if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        out.errors.append(f"{where}: unknown type {svc_type!r}")
        return out
    l7 = lbl7.enabled(_dict(meta.get("annotations")))
    if l7:
        _algo, err = lbl7.algorithm(_dict(meta.get("annotations")))
        if err:
            out.errors.append(f"{where}: {err}")
    itp_local = spec.get("internalTrafficPolicy") == "Local"
    etp_local = spec.get("externalTrafficPolicy") == "Local" and svc_type in ("NodePort", "LoadBalancer")
    timeout = 0
    if spec.get("sessionAffinity") == "ClientIP":
        t = _dict(_dict(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        timeout = DEFAULT_AFFINITY_TIMEOUT
        if isinstance(t, int) and not isinstance(t, bool):
            if 0 < t <= MAX_AFFINITY_TIMEOUT:
                timeout = t
            else:
                out.errors.append(f"{where}: sessionAffinity timeoutSeconds {t} out of 1..86400; using 10800")
    ips = [ip for ip in (_ipv4(x) for x in cluster_ips) if ip]
    external = [ip for ip in (_ipv4(x) for x in _list(spec.get("externalIPs"))) if ip]
    lb_ips: list[str] = []
    if svc_type == "LoadBalancer":
        for ing in _list(_dict(_dict(svc.get("status")).get("loadBalancer")).get("ingress")):
            ip = _ipv4(_dict(ing).get("ip"))
            if ip:
                lb_ips.append(ip)

    def add(
        fe: Frontend, type_flag: int, ref: ServiceRef, eps: list[EndpointInfo], local_to: str | None
    ) -> None:
        if envoy is not None:  # lb-l7: the node's Envoy is the one backend; it balances per request
            out.frontends[fe] = FrontendPlan(
                frontend=fe,
                service=ref,
                type_flag=type_flag,
                backends=(envoy,),
                states=(BE_ACTIVE,),
                l7_proxy_port=envoy.port,
                nodes=(ctx.node,),
            )
            return
        chosen, state = _select(eps, local_to)
        out.frontends[fe] = FrontendPlan(
            frontend=fe,
            service=ref,
            type_flag=type_flag,
            backends=tuple(e.backend for e in chosen),
            states=tuple(state for _ in chosen),
            affinity_timeout=timeout,
            local=local_to is not None,
            nodes=tuple(e.node for e in chosen),
        )

    for raw in _list(spec.get("ports")):
        p = _dict(raw)
        port_name = str(p.get("name") or "")
        proto = str(p.get("protocol") or "TCP")
        if proto not in PROTO_NUMBERS:
            out.errors.append(
                f"{where}: port {port_name or p.get('port')}: protocol {proto} not load-balanced"
            )
            continue
        port = _port(p.get("port"))
        if not port:
            out.errors.append(f"{where}: invalid port {p.get('port')!r}")
            continue
        proto_n = PROTO_NUMBERS[proto]
        ref = ServiceRef(ns, name, port_name)
        eps = endpoints_of(port_name, proto, slices)
        envoy = _l7_backend(ctx, lbl7.PortKey(ns, name, port)) if l7 and proto == "TCP" else None
        if l7 and proto == "TCP" and envoy is None:
            out.errors.append(
                f"{where}: port {port_name or port}: lb-l7 has no listener on this node "
                f"({'no pod CIDR' if not lbl7.router_ip(ctx.pod_cidr) else 'no listener port'}); "
                "load-balanced at the socket"
            )
        for ip in ips:
            add(Frontend(ip, port, proto_n), F_CLUSTER_IP, ref, eps, ctx.node if itp_local else None)
        for ip in external:
            add(Frontend(ip, port, proto_n), F_EXTERNAL_IP, ref, eps, ctx.node if etp_local else None)
        for ip in lb_ips:
            if l7 and proto == "TCP":
                continue  # Envoy listens on the LoadBalancer address itself (north-south)
            add(Frontend(ip, port, proto_n), F_LOAD_BALANCER, ref, eps, ctx.node if etp_local else None)
        node_port = _port(p.get("nodePort"))
        if svc_type in ("NodePort", "LoadBalancer") and node_port:
            for node, addr in sorted(ctx.node_addresses.items()):
                if _ipv4(addr):
                    add(
                        Frontend(addr, node_port, proto_n), F_NODE_PORT, ref, eps, node if etp_local else None
                    )
        elif p.get("nodePort") is not None and not node_port:
            out.errors.append(f"{where}: invalid nodePort {p.get('nodePort')!r}")
    return out


def _l7_backend(ctx: PlanContext, key: lbl7.PortKey) -> Backend | None:
    """The node's Envoy listener for one lb-l7 Service port, as a backend (None: not known)."""
    port = ctx.l7_ports.get(key)
    where = lbl7.listener(ctx.pod_cidr, port) if port else None
    return Backend(where[0], where[1], PROTO_NUMBERS["TCP"]) if where else None


def merge(plans: Mapping[tuple[str, str], ServicePlan]) -> Plan:
    """All Services' frontends; a frontend two Services claim goes to the first by (namespace, name)."""
    out = Plan()
    owner: dict[Frontend, tuple[str, str]] = {}
    for key in sorted(plans):
        sp = plans[key]
        out.errors.extend(sp.errors)
        for fe, fp in sp.frontends.items():
            if fe in owner:
                out.errors.append(
                    f"Service {key[0]}/{key[1]}: frontend {fe} already belongs to "
                    f"Service {owner[fe][0]}/{owner[fe][1]}"
                )
                continue
            owner[fe] = key
            out.frontends[fe] = fp
    return out


def plan_all(services: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]], ctx: PlanContext) -> Plan:
    """Every Service's frontends (the one-shot form of what the agent keeps incrementally)."""
    by_svc = slices_by_service(slices)
    plans: dict[tuple[str, str], ServicePlan] = {}
    for svc in services:
        meta = _dict(svc.get("metadata"))
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        plans[key] = plan_service(svc, by_svc.get(key, []), ctx)
    return merge(plans)
