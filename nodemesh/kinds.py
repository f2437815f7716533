"""The Kubernetes kinds nodemesh watches: API group, version, plural, scope.

One table, used by the watcher (what to list/watch), the local API server (what it serves), the
CLI (``nodemesh get pods`` → Pod) and the contract (``ObjectEvent.kind`` is :attr:`Kind.kind`).
"""

from __future__ import annotations

import msgspec

__all__ = ["KINDS", "Kind", "by_kind", "lookup"]


class Kind(msgspec.Struct, frozen=True):
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        """The REST path (``/api/v1/namespaces/ns/pods/name``) of a collection or an object."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return base


_GW = "gateway.networking.k8s.io"
_CILIUM = "cilium.io"

KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "", "v1", "namespaces", False, ("ns",)),
    Kind("Node", "", "v1", "nodes", False, ("no",)),
    Kind("Pod", "", "v1", "pods", True, ("po",)),
    Kind("Service", "", "v1", "services", True, ("svc",)),
    Kind("Secret", "", "v1", "secrets", True, (), has_status=False),
    Kind("ConfigMap", "", "v1", "configmaps", True, ("cm",), has_status=False),
    Kind("ServiceAccount", "", "v1", "serviceaccounts", True, ("sa",), has_status=False),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True, (), has_status=False),
    Kind("Deployment", "apps", "v1", "deployments", True, ("deploy",)),
    Kind("ReplicaSet", "apps", "v1", "replicasets", True, ("rs",)),
    Kind("Ingress", "networking.k8s.io", "v1", "ingresses", True, ("ing",)),
    Kind("IngressClass", "networking.k8s.io", "v1", "ingressclasses", False, (), has_status=False),
    Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True, ("netpol",)),
    Kind("GatewayClass", _GW, "v1", "gatewayclasses", False, ("gc",)),
    Kind("Gateway", _GW, "v1", "gateways", True, ("gtw",)),
    Kind("HTTPRoute", _GW, "v1", "httproutes", True),
    Kind("GRPCRoute", _GW, "v1", "grpcroutes", True),
    Kind("TLSRoute", _GW, "v1alpha2", "tlsroutes", True),
    Kind("TCPRoute", _GW, "v1alpha2", "tcproutes", True),
    Kind("ReferenceGrant", _GW, "v1beta1", "referencegrants", True, ("refgrant",), has_status=False),
    Kind("BackendTLSPolicy", _GW, "v1alpha3", "backendtlspolicies", True, ("btlspolicy",)),
    Kind("CiliumNetworkPolicy", _CILIUM, "v2", "ciliumnetworkpolicies", True, ("cnp",)),
    Kind(
        "CiliumClusterwideNetworkPolicy", _CILIUM, "v2", "ciliumclusterwidenetworkpolicies", False, ("ccnp",)
    ),
    Kind(
        "CiliumLoadBalancerIPPool",
        _CILIUM,
        "v2alpha1",
        "ciliumloadbalancerippools",
        False,
        ("ippools", "ippool", "lbippool", "lbippools"),
    ),
    Kind("CiliumEnvoyConfig", _CILIUM, "v2", "ciliumenvoyconfigs", True, ("cec",), has_status=False),
    Kind(
        "CiliumClusterwideEnvoyConfig",
        _CILIUM,
        "v2",
        "ciliumclusterwideenvoyconfigs",
        False,
        ("ccec",),
        has_status=False,
    ),
)

_BY_KIND = {k.kind: k for k in KINDS}
_BY_NAME: dict[str, Kind] = {}
for _k in KINDS:
    for _n in (_k.kind.lower(), _k.plural, *_k.short_names):
        _BY_NAME[_n] = _k


def by_kind(kind: str) -> Kind:
    """The Kind for an exact kind name (``HTTPRoute``); KeyError if unknown."""
    return _BY_KIND[kind]


def lookup(name: str) -> Kind | None:
    """The Kind for what a user types: ``pods``, ``pod``, ``po``, ``httproutes``, ``HTTPRoute``."""
    return _BY_KIND.get(name) or _BY_NAME.get(name.lower())
