"""One pass of the operator: the cluster state (from the K8S stream) in, the writes to make out.

Level-triggered and pure: the same state gives the same writes, so a pass repeated before the cache
has seen the previous pass's writes asks for the same thing again (a create then fails with 409,
a status patch changes nothing), and a pass that finds nothing to do writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodemesh.messages.k8s import ObjectWrite
from services.operator.gateway import desired_gateway_services
from services.operator.ingress import desired_ingress_services
from services.operator.lbipam import lbipam_writes
from services.operator.objects import as_map
from services.operator.services import service_writes

__all__ = ["KINDS", "reconcile"]

#: What a pass reads (the cell replays these).
KINDS = (
    "Namespace",
    "Service",
    "Gateway",
    "GatewayClass",
    "Ingress",
    "IngressClass",
    "CiliumLoadBalancerIPPool",
)

Lister = Callable[[str], list[dict[str, Any]]]


def reconcile(
    objects: Lister,
    now: str,
    *,
    default_ingress_mode: str = "dedicated",
    shared_ingress_namespace: str = "kube-system",
) -> list[ObjectWrite]:
    """Service writes first (creates, patches, deletes), then LB-IPAM's status writes for the
    Services as they are now (a Service created in this pass gets its address in the next one, once
    the watcher has published it)."""
    desired = desired_gateway_services(objects("Gateway"), objects("GatewayClass"))
    desired += desired_ingress_services(
        objects("Ingress"), objects("IngressClass"), default_ingress_mode, shared_ingress_namespace
    )
    namespaces = {str(as_map(n.get("metadata")).get("name", "")) for n in objects("Namespace")}
    services = objects("Service")
    writes = service_writes(desired, services, namespaces)
    writes += lbipam_writes(objects("CiliumLoadBalancerIPPool"), services, now)
    return writes
