"""LoadBalancer Services for Gateways, as Cilium's gateway controller creates them.

For every Gateway whose GatewayClass is ours (``nodemesh.lbservices.GATEWAY_CONTROLLERS``) a Service
``cilium-gateway-<gateway>`` of type LoadBalancer in the Gateway's namespace, owned by the Gateway,
with one port ``port-<n>`` per listener port, so LB-IPAM gives it an address (which xds copies into
the Gateway's status). ``spec.addresses`` of type IPAddress become the Service's requested addresses,
``spec.infrastructure`` labels and annotations are copied onto it.
"""

from __future__ import annotations

from typing import Any

from nodemesh.lbservices import GATEWAY_CONTROLLERS, gateway_service_name
from services.operator.lbipam import IPS_ANNOTATION
from services.operator.objects import MANAGED_BY, MANAGER, as_list, as_map, owner_ref

__all__ = ["GATEWAY_NAME", "OWNING_GATEWAY", "desired_gateway_services"]

OWNING_GATEWAY = "io.cilium.gateway/owning-gateway"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"


def _service(gw: dict[str, Any]) -> dict[str, Any]:
    meta, spec = as_map(gw.get("metadata")), as_map(gw.get("spec"))
    infra = as_map(spec.get("infrastructure"))
    ports = sorted(
        {
            int(lst["port"])
            for lst in as_list(spec.get("listeners"))
            if isinstance(lst, dict) and isinstance(lst.get("port"), int)
        }
    )
    annotations = {str(k): str(v) for k, v in as_map(infra.get("annotations")).items()}
    ips = [
        str(a["value"])
        for a in as_list(spec.get("addresses"))
        if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress" and a.get("value")
    ]
    if ips:
        annotations[IPS_ANNOTATION] = ",".join(ips)
    labels = {str(k): str(v) for k, v in as_map(infra.get("labels")).items()}
    labels.update({OWNING_GATEWAY: meta["name"], GATEWAY_NAME: meta["name"], MANAGED_BY: MANAGER})
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": gateway_service_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels,
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


def desired_gateway_services(
    gateways: list[dict[str, Any]], classes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The Services the Gateways of our classes need (a malformed Gateway is skipped)."""
    ours = {
        as_map(c.get("metadata")).get("name")
        for c in classes
        if as_map(c.get("spec")).get("controllerName") in GATEWAY_CONTROLLERS
    }
    out = []
    for gw in gateways:
        meta = as_map(gw.get("metadata"))
        if as_map(gw.get("spec")).get("gatewayClassName") not in ours:
            continue
        if not isinstance(meta.get("name"), str) or not isinstance(meta.get("namespace"), str):
            continue
        out.append(_service(gw))
    return out
