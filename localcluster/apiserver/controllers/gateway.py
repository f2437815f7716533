"""LoadBalancer Services for Gateways, as Cilium's gateway controller creates them.

For every Gateway whose GatewayClass is ours (controllerName ``nodemesh.io/gateway-controller`` or
``io.cilium/gateway-controller``) a Service ``cilium-gateway-<gateway>`` of type LoadBalancer is
kept in the Gateway's namespace, owned by the Gateway, with one port ``port-<n>`` per listener
port, so LB-IPAM gives it an address (the xds service copies it into the Gateway's status).
``spec.addresses`` of type IPAddress become the Service's requested addresses.
"""

from __future__ import annotations

import hashlib
from typing import Any

from localcluster.apiserver.controllers.lbipam import IPS_ANNOTATION
from localcluster.apiserver.controllers.util import (
    controlled_by,
    guarded,
    owner_ref,
    with_allocated_node_ports,
)
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["CONTROLLER_NAMES", "gateway_service_name", "reconcile_gateways"]

CONTROLLER_NAMES = ("nodemesh.io/gateway-controller", "io.cilium/gateway-controller")
OWNING_GATEWAY = "io.cilium.gateway/owning-gateway"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"


def gateway_service_name(gateway: str) -> str:
    """``cilium-gateway-<name>``, shortened like Cilium's ``model.Shorten`` past 63 characters."""
    name = f"cilium-gateway-{gateway}"
    if len(name) <= 63:
        return name
    return f"{name[:52]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def _desired(gw: dict[str, Any]) -> dict[str, Any]:
    meta, spec = gw["metadata"], gw.get("spec") or {}
    infra = spec.get("infrastructure") or {}
    ports = sorted(
        {int(lst["port"]) for lst in spec.get("listeners") or [] if isinstance(lst, dict) and "port" in lst}
    )
    annotations = dict(infra.get("annotations") or {})
    ips = [
        a["value"]
        for a in spec.get("addresses") or []
        if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress" and a.get("value")
    ]
    if ips:
        annotations[IPS_ANNOTATION] = ",".join(ips)
    out: dict[str, Any] = {
        "metadata": {
            "name": gateway_service_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                **(infra.get("labels") or {}),
                OWNING_GATEWAY: meta["name"],
                GATEWAY_NAME: meta["name"],
            },
            "ownerReferences": [owner_ref(gw)],
        },
        "spec": {
            "type": "LoadBalancer",
            "ports": [{"name": f"port-{p}", "port": p, "protocol": "TCP", "targetPort": p} for p in ports],
        },
    }
    if annotations:
        out["metadata"]["annotations"] = annotations
    return out


def reconcile_gateways(store: Store) -> int:
    writes = 0
    ours = {
        c["metadata"]["name"]
        for c in store.objects("GatewayClass")
        if (c.get("spec") or {}).get("controllerName") in CONTROLLER_NAMES
    }
    for gw in list(store.objects("Gateway")):
        writes += guarded(_reconcile_gateways_one, store, gw, ours)
    return writes


def _reconcile_gateways_one(store: Store, gw: dict[str, Any], ours: set[str]) -> int:
    writes = 0
    svc_kind = by_kind("Service")
    meta = gw["metadata"]
    ns = meta["namespace"]
    owned = [s for s in store.objects("Service", ns) if controlled_by(s, gw)]
    if (gw.get("spec") or {}).get("gatewayClassName") not in ours:
        for s in owned:
            store.delete(svc_kind, ns, s["metadata"]["name"])
            writes += 1
        return writes
    want = _desired(gw)
    cur = store.peek("Service", ns, want["metadata"]["name"])
    if cur is None:
        store.create(svc_kind, want, validate=False)
        writes += 1
        return writes
    if not controlled_by(cur, gw):
        return writes  # a user's Service of that name: leave it alone
    new = clone(cur)
    new["metadata"]["labels"] = want["metadata"]["labels"]
    if "annotations" in want["metadata"] or "annotations" in new["metadata"]:
        new["metadata"]["annotations"] = want["metadata"].get("annotations", {})
    new["spec"].update(with_allocated_node_ports(want["spec"], cur["spec"]))
    if new != cur:
        before = store.rv
        store.update(svc_kind, new, validate=False)
        writes += int(store.rv != before)
    return writes
