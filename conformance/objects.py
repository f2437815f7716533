"""Builders for Kubernetes objects as the API returns them (tests and examples use them).

Every builder returns a plain dict with ``apiVersion``, ``kind``, ``metadata`` (generation 1) and
``spec``; :func:`inputs` groups objects by kind for :class:`services.xds.translate.TranslateInput`.
"""

from __future__ import annotations

from typing import Any

from .certs import KeyPair, tls_secret

__all__ = [
    "endpoint_slice",
    "gateway",
    "gateway_class",
    "grant",
    "httproute",
    "inputs",
    "lb_service",
    "namespace",
    "route",
    "secret",
    "service",
]

GW = "gateway.networking.k8s.io"
Obj = dict[str, Any]


def _meta(name: str, ns: str = "", **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "generation": 1, "uid": f"uid-{ns}-{name}"}
    if ns:
        m["namespace"] = ns
    m.update(extra)
    return m


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    lab = {"kubernetes.io/metadata.name": name, **(labels or {})}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=lab)}


def gateway_class(name: str = "nodemesh", controller: str = "nodemesh.io/gateway-controller") -> Obj:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "GatewayClass",
        "metadata": _meta(name),
        "spec": {"controllerName": controller},
    }


def gateway(name: str, ns: str, listeners: list[Obj], cls: str = "nodemesh") -> Obj:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": _meta(name, ns),
        "spec": {"gatewayClassName": cls, "listeners": listeners},
    }


def lb_service(ns: str, name: str, ip: str) -> Obj:
    """A LoadBalancer Service with an allocated address (what LB-IPAM gives a Gateway/Ingress)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns),
        "spec": {"type": "LoadBalancer", "ports": []},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
    }


def route(kind: str, name: str, ns: str, spec: Obj, created: str = "2024-01-01T00:00:00Z") -> Obj:
    version = "v1" if kind in ("HTTPRoute", "GRPCRoute") else "v1alpha2"
    return {
        "apiVersion": f"{GW}/{version}",
        "kind": kind,
        "metadata": _meta(name, ns, creationTimestamp=created),
        "spec": spec,
    }


def httproute(
    name: str, ns: str, gateway_name: str, rules: list[Obj], hostnames: list[str] | None = None, **parent: Any
) -> Obj:
    spec: Obj = {"parentRefs": [{"name": gateway_name, **parent}], "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return route("HTTPRoute", name, ns, spec)


def service(
    name: str,
    ns: str,
    ports: list[tuple[str, int, int]],
    annotations: dict[str, str] | None = None,
    cluster_ip: str = "",
) -> Obj:
    """``ports``: (name, port, targetPort)."""
    m = _meta(name, ns)
    if annotations:
        m["annotations"] = annotations
    spec: Obj = {
        "selector": {"app": name},
        "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports],
    }
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": m, "spec": spec}


def endpoint_slice(
    svc: str, ns: str, ports: list[tuple[str, int]], addresses: list[str], not_ready: list[str] | None = None
) -> Obj:
    eps = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    eps += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready or []]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(f"{svc}-abc", ns, labels={"kubernetes.io/service-name": svc}),
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": eps,
    }


def secret(ns: str, name: str, pair: KeyPair) -> Obj:
    s = tls_secret(ns, name, pair)
    s["metadata"] = {"namespace": ns, "name": name, "generation": 1, "uid": f"uid-{ns}-{name}"}
    return s


def grant(ns: str, name: str, from_kind: str, from_ns: str, to_kind: str, to_name: str | None = None) -> Obj:
    to: Obj = {"group": "", "kind": to_kind}
    if to_name:
        to["name"] = to_name
    return {
        "apiVersion": f"{GW}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": _meta(name, ns),
        "spec": {"from": [{"group": GW, "kind": from_kind, "namespace": from_ns}], "to": [to]},
    }


def inputs(*objs: Obj) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for o in objs:
        out.setdefault(str(o["kind"]), []).append(o)
    return out
