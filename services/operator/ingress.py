"""LoadBalancer Services for Ingresses, as Cilium's ingress controller creates them.

Class and mode come from ``nodemesh.lbservices`` (which xds uses too, so both agree): dedicated mode
(the default) → ``cilium-ingress-<ingress>`` in the Ingress's namespace, owned by the Ingress (the
garbage collector removes it with the Ingress); shared mode → ``cilium-ingress`` in the shared
namespace, owned by nobody (deleted by the operator when the last shared Ingress goes).
"""

from __future__ import annotations

from typing import Any

from nodemesh.lbservices import SHARED_INGRESS_NAMESPACE, ingress_is_ours, ingress_service
from services.operator.objects import MANAGED_BY, MANAGER, as_map, owner_ref

__all__ = ["OWNING_INGRESS", "desired_ingress_services"]

OWNING_INGRESS = "ingress.cilium.io/owning-ingress"


def desired_ingress_services(
    ingresses: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    default_mode: str = "dedicated",
    shared_namespace: str = SHARED_INGRESS_NAMESPACE,
) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ing in ingresses:
        meta = as_map(ing.get("metadata"))
        if not isinstance(meta.get("name"), str) or not isinstance(meta.get("namespace"), str):
            continue
        if not ingress_is_ours(ing, classes):
            continue
        ns, name, dedicated = ingress_service(ing, default_mode, shared_namespace)
        if (ns, name) in out:
            continue
        labels = {"cilium.io/ingress": "true", MANAGED_BY: MANAGER}
        svc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {
                "type": "LoadBalancer",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 443},
                ],
            },
        }
        if dedicated:
            labels[OWNING_INGRESS] = meta["name"]
            svc["metadata"]["ownerReferences"] = [owner_ref(ing)]
        out[(ns, name)] = svc
    return list(out.values())
