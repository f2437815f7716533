"""The translator's input and output: Kubernetes objects in, Envoy resources and status patches out.

This is the stable interface between translation (pure) and the ADS server / app wiring (I/O).
Nothing here does I/O; ``TranslateInput.now`` is the only notion of time (used for
``lastTransitionTime`` of conditions whose status changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from nodemesh.messages.k8s import StatusPatch

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "TYPE_URLS",
    "GatewayInfo",
    "TranslateInput",
    "Translation",
]

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# In the order a server should push them (clusters before the listeners that use them).
TYPE_URLS = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

Obj = dict[str, Any]


@dataclass(frozen=True)
class TranslateInput:
    """Every object the translator reads, as the API returns them (JSON-shaped dicts, status included).

    ``objects`` maps a kind (``"Gateway"``, ``"HTTPRoute"``, ``"Service"`` …, exactly as in
    ``nodemesh/kinds.py``) to its objects. Missing kinds are empty. Kinds read: Gateway, GatewayClass,
    HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, ReferenceGrant, Ingress, IngressClass, Service,
    EndpointSlice, Secret, ConfigMap, Namespace, Node, CiliumEnvoyConfig, CiliumClusterwideEnvoyConfig.
    """

    objects: dict[str, list[Obj]] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    # RFC 3339 timestamp for new/changed conditions ("" → keep the previous one or the epoch).
    now: str = ""
    controller_names: tuple[str, ...] = ("nodemesh.io/gateway-controller", "io.cilium/gateway-controller")
    ingress_classes: tuple[str, ...] = ("nodemesh", "cilium")
    # Shared-mode Ingresses are served by the LoadBalancer Service ``cilium-ingress`` in this namespace.
    shared_ingress_namespace: str = "kube-system"
    # Ingress mode when the annotation ``ingress.cilium.io/loadbalancer-mode`` is absent.
    default_ingress_mode: str = "dedicated"
    # Static Envoy cluster of the per-node gRPC access log service (L7 flows, docs/l7-visibility.md);
    # "" = no access log on the HTTP connection managers translation builds.
    access_log_cluster: str = ""

    def of(self, kind: str) -> list[Obj]:
        return self.objects.get(kind, [])


@dataclass
class GatewayInfo:
    """What the ADS side needs to set ``Programmed`` on a Gateway after Envoy ACKs.

    ``envoy_listeners`` are the Listener resource names that serve this Gateway; ``address`` is the
    allocated address ("" = none yet, so Programmed must stay False/AddressNotAssigned);
    ``listeners`` is ``{gateway listener name: valid}`` (an invalid listener is Programmed=False/Invalid).
    ``status_patch_index`` is the index of the Gateway's patch in ``Translation.statuses``.
    """

    namespace: str
    name: str
    generation: int
    address: str
    envoy_listeners: list[str] = field(default_factory=list)
    listeners: dict[str, bool] = field(default_factory=dict)
    accepted: bool = True
    status_patch_index: int = -1


@dataclass
class Translation:
    """The result: Envoy resources for every node, plus per-node extras, plus status patches.

    ``resources[type_url][name]`` is a protobuf message of that type. TLS private keys appear only in
    ``SECRET`` resources (served over SDS). ``node_resources[node]`` holds resources only that node
    gets (CiliumEnvoyConfig with a nodeSelector); a node's snapshot is ``resources`` plus its extras.
    ``statuses`` are the patches for GatewayClass, Gateway, HTTPRoute/GRPCRoute/TLSRoute/TCPRoute and
    Ingress; Gateway patches carry no ``Programmed`` condition: see :func:`with_programmed`.
    ``errors`` are problems that have no status to land in (a CEC resource that does not parse).
    """

    resources: dict[str, dict[str, Message]] = field(default_factory=lambda: {t: {} for t in TYPE_URLS})
    node_resources: dict[str, dict[str, dict[str, Message]]] = field(default_factory=dict)
    statuses: list[StatusPatch] = field(default_factory=list)
    gateways: dict[str, GatewayInfo] = field(default_factory=dict)  # key "<ns>/<name>"
    errors: list[str] = field(default_factory=list)
    # LoadBalancer Services the translated objects need to get an address (Ingress: dedicated
    # ``cilium-ingress-<name>``, shared ``cilium-ingress``), for whoever owns Service creation.
    lb_services: list[dict[str, Any]] = field(default_factory=list)

    def for_node(self, node: str) -> dict[str, dict[str, Message]]:
        """The complete resource set of one node."""
        extra = self.node_resources.get(node)
        if not extra:
            return self.resources
        out = {t: dict(r) for t, r in self.resources.items()}
        for t, r in extra.items():
            out.setdefault(t, {}).update(r)
        return out
