"""LoadBalancer Services for Ingresses, as Cilium's ingress controller creates them.

Which Services are needed is the translator's answer (``services.xds.translate`` →
``Translation.lb_services``), so the local API server and xds never disagree about class, mode or
names: dedicated mode (the default) → ``cilium-ingress-<ingress>`` in the Ingress's namespace, owned
by the Ingress (the garbage collector removes it with the Ingress); shared mode → ``cilium-ingress``
in the shared namespace (``kube-system``). LB-IPAM then gives the Service an address, which xds
copies into the Ingress's ``status.loadBalancer`` and binds the Envoy listeners on. A Service this
controller created that is no longer needed (the Ingress changed class or mode, the last shared
Ingress went away) is deleted; a user's Service of the same name is left alone.
"""

from __future__ import annotations

from typing import Any

from localcluster.apiserver.controllers.util import owner_ref, with_allocated_node_ports
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind
from services.xds.translate import TranslateInput, translate

__all__ = ["MANAGED_BY", "desired_ingress_services", "reconcile_ingresses"]

MANAGED_BY = "nodemesh.io/managed-by"
CONTROLLER = "ingress-controller"
OWNING_INGRESS = "ingress.cilium.io/owning-ingress"


def desired_ingress_services(store: Store) -> list[dict[str, Any]]:
    """The LoadBalancer Services the stored Ingresses need, with owner references for dedicated ones."""
    ingresses = list(store.objects("Ingress"))
    if not ingresses:
        return []
    t = translate(
        TranslateInput(objects={"Ingress": ingresses, "IngressClass": list(store.objects("IngressClass"))})
    )
    by_key = {(i["metadata"]["namespace"], i["metadata"]["name"]): i for i in ingresses}
    out = []
    for s in t.lb_services:
        svc = clone(s)
        meta = svc["metadata"]
        meta.setdefault("labels", {})[MANAGED_BY] = CONTROLLER
        owner = by_key.get((meta["namespace"], meta["labels"].get(OWNING_INGRESS, "")))
        if owner is not None:
            meta["ownerReferences"] = [owner_ref(owner)]
        out.append(svc)
    return out


def reconcile_ingresses(store: Store) -> int:
    svc_kind = by_kind("Service")
    writes = 0
    want = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in desired_ingress_services(store)}
    for (ns, name), svc in want.items():
        if store.peek("Namespace", "", ns) is None:
            continue  # e.g. the shared namespace removed by a user: nothing to create it in
        cur = store.peek("Service", ns, name)
        if cur is None:
            store.create(svc_kind, svc, validate=False)
            writes += 1
            continue
        if (cur["metadata"].get("labels") or {}).get(MANAGED_BY) != CONTROLLER:
            continue  # a user's Service of that name: leave it alone
        new = clone(cur)
        new["metadata"]["labels"] = svc["metadata"]["labels"]
        if "ownerReferences" in svc["metadata"]:
            new["metadata"]["ownerReferences"] = svc["metadata"]["ownerReferences"]
        new["spec"].update(with_allocated_node_ports(svc["spec"], cur["spec"]))
        if new != cur:
            before = store.rv
            store.update(svc_kind, new, validate=False)
            writes += int(store.rv != before)
    for s in list(store.objects("Service")):
        m = s["metadata"]
        if (m.get("labels") or {}).get(MANAGED_BY) == CONTROLLER and (m["namespace"], m["name"]) not in want:
            store.delete(svc_kind, m["namespace"], m["name"])
            writes += 1
    return writes
