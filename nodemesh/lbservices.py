"""Which LoadBalancer Services Gateways and Ingresses need, and what they are called.

The operator creates these Services and xds serves Envoy listeners on their addresses; both take the
names and the "is it ours" decisions from here, so they never disagree about a class, a mode or a
name (as Cilium's operator and agent share ``model.Shorten`` and the ingress class rules).
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "GATEWAY_CONTROLLERS",
    "INGRESS_CLASSES",
    "INGRESS_CONTROLLERS",
    "MODE_ANNOTATION",
    "SHARED_INGRESS_NAMESPACE",
    "SHARED_INGRESS_SERVICE",
    "gateway_service_name",
    "ingress_is_ours",
    "ingress_service",
]

GATEWAY_CONTROLLERS = ("nodemesh.io/gateway-controller", "io.cilium/gateway-controller")
INGRESS_CONTROLLERS = ("nodemesh.io/ingress-controller", "cilium.io/ingress-controller")
INGRESS_CLASSES = ("nodemesh", "cilium")
MODE_ANNOTATION = "ingress.cilium.io/loadbalancer-mode"
SHARED_INGRESS_NAMESPACE = "kube-system"
SHARED_INGRESS_SERVICE = "cilium-ingress"
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def gateway_service_name(gateway: str) -> str:
    """``cilium-gateway-<name>``, cut like Cilium's ``model.Shorten`` past 63 characters."""
    name = f"cilium-gateway-{gateway}"
    if len(name) <= 63:
        return name
    return f"{name[:52]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def ingress_is_ours(
    ing: dict[str, Any], ingress_classes: list[dict[str, Any]], classes: tuple[str, ...] = INGRESS_CLASSES
) -> bool:
    """An Ingress of one of ``classes`` (spec or the legacy annotation), or of no class while an
    IngressClass of ours is the cluster's default."""
    meta = _map(ing.get("metadata"))
    cls = _map(ing.get("spec")).get("ingressClassName") or _map(meta.get("annotations")).get(
        "kubernetes.io/ingress.class"
    )
    if cls:
        return cls in classes
    for ic in ingress_classes:
        default = _map(_map(ic.get("metadata")).get("annotations")).get(DEFAULT_CLASS) == "true"
        if default and _map(ic.get("spec")).get("controller") in INGRESS_CONTROLLERS:
            return True
    return False


def ingress_service(
    ing: dict[str, Any],
    default_mode: str = "dedicated",
    shared_namespace: str = SHARED_INGRESS_NAMESPACE,
) -> tuple[str, str, bool]:
    """``(namespace, name, dedicated)`` of the LoadBalancer Service serving ``ing``: dedicated mode
    → ``cilium-ingress-<name>`` next to it; shared (annotation) → ``cilium-ingress`` in the shared
    namespace."""
    meta = _map(ing.get("metadata"))
    mode = _map(meta.get("annotations")).get(MODE_ANNOTATION, default_mode)
    if mode == "shared":
        return shared_namespace, SHARED_INGRESS_SERVICE, False
    return str(meta.get("namespace", "")), f"cilium-ingress-{meta.get('name', '')}", True
