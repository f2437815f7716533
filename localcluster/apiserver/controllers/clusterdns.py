"""The ``kube-system/kube-dns`` Service and its EndpointSlice, pointing at local mode's DNS server.

As in a kubeadm cluster, pods resolve through the ``kube-dns`` Service's ClusterIP (``10.96.0.10``,
the address kubelet writes into every pod's resolv.conf) with ports ``dns`` (53/UDP) and ``dns-tcp``
(53/TCP). Behind it there is no pod but the one local DNS server (services/dns) on the host, so the
Service has no selector and its EndpointSlice is written here, labelled as managed by nodemesh (the
EndpointSlice controller leaves it alone), with the server's address as its one endpoint.

The Service is ensured at every start (like the namespaces); the slice by a controller pass, so an
edited or deleted slice is put back and a changed server address is followed.
"""

from __future__ import annotations

from typing import Any

from localcluster.apiserver.admission import DNS_SERVICE_IP
from localcluster.apiserver.controllers.endpointslices import SERVICE_NAME
from localcluster.apiserver.controllers.util import owner_ref
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["DNS_NAMESPACE", "DNS_SERVICE", "MANAGED_BY_LOCAL_DNS", "ClusterDns", "ensure_dns_service"]

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
SLICE_NAME = "kube-dns-local"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY_LOCAL_DNS = "nodemesh.io/local-dns"
_PORTS = (("dns", "UDP"), ("dns-tcp", "TCP"))


def dns_service() -> dict[str, Any]:
    """kube-dns as kubeadm creates it, minus the selector (no CoreDNS pods here)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": DNS_SERVICE,
            "namespace": DNS_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "nodemesh-dns"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": DNS_SERVICE_IP,
            "clusterIPs": [DNS_SERVICE_IP],
            "ports": [
                {"name": name, "port": 53, "protocol": proto, "targetPort": 53} for name, proto in _PORTS
            ],
        },
    }


def ensure_dns_service(store: Store) -> dict[str, Any] | None:
    """Create kube-dns if it is missing; None (and nothing written) if another Service holds its IP."""
    cur = store.peek("Service", DNS_NAMESPACE, DNS_SERVICE)
    if cur is not None:
        return cur
    for svc in store.objects("Service"):
        if (svc.get("spec") or {}).get("clusterIP") == DNS_SERVICE_IP:
            return None  # a store from before kube-dns existed: never hand out one IP twice
    return store.create(by_kind("Service"), dns_service(), validate=False)


class ClusterDns:
    """Controller pass: kube-dns' EndpointSlice names ``server_addr`` (the local DNS server)."""

    def __init__(self, server_addr: str) -> None:
        self.server_addr = server_addr

    def desired(self, svc: dict[str, Any]) -> dict[str, Any]:
        family = "IPv6" if ":" in self.server_addr else "IPv4"
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": SLICE_NAME,
                "namespace": DNS_NAMESPACE,
                "labels": {SERVICE_NAME: DNS_SERVICE, MANAGED_BY: MANAGED_BY_LOCAL_DNS},
                "ownerReferences": [owner_ref(svc)],
            },
            "addressType": family,
            "endpoints": [
                {
                    "addresses": [self.server_addr],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                }
            ],
            "ports": [{"name": name, "port": 53, "protocol": proto} for name, proto in _PORTS],
        }

    def reconcile(self, store: Store) -> int:
        svc = store.peek("Service", DNS_NAMESPACE, DNS_SERVICE)
        if svc is None:
            return 0  # deleted by the user: it comes back at the next start
        want = self.desired(svc)
        kind = by_kind("EndpointSlice")
        cur = store.peek("EndpointSlice", DNS_NAMESPACE, SLICE_NAME)
        if cur is None:
            store.create(kind, want, validate=False)
            return 1
        fields = ("addressType", "endpoints", "ports")
        meta_same = all(cur["metadata"].get(k) == want["metadata"][k] for k in ("labels", "ownerReferences"))
        if meta_same and all(cur.get(k) == want[k] for k in fields):
            return 0
        new = clone(cur)
        new.update({k: want[k] for k in fields})
        new["metadata"]["labels"] = want["metadata"]["labels"]
        new["metadata"]["ownerReferences"] = want["metadata"]["ownerReferences"]
        store.update(kind, new, validate=False)
        return 1
