"""The Gateway controller's LoadBalancer Service settles: admission allocates its nodePorts, and the
controller keeps them instead of writing the ports without them on every reconcile (an endless
update loop that starved the other controllers and kept a Gateway without an address)."""

from __future__ import annotations

from pathlib import Path

from localcluster.apiserver.controllers.bootstrap import bootstrap
from localcluster.apiserver.controllers.gateway import reconcile_gateways
from localcluster.apiserver.controllers.lbipam import LbIpam
from localcluster.apiserver.store import Store
from nodemesh.kinds import by_kind


def test_gateway_service_keeps_its_node_ports_and_settles(tmp_path: Path) -> None:
    store = Store(tmp_path)
    bootstrap(store, nodes=1)
    store.create(by_kind("Namespace"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    gw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "web"},
        "spec": {
            "gatewayClassName": "cilium",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }
    store.create(by_kind("Gateway"), gw)
    assert reconcile_gateways(store) == 1
    svc = store.peek("Service", "web", "cilium-gateway-gw")
    assert svc is not None
    node_ports = [p.get("nodePort") for p in svc["spec"]["ports"]]
    assert all(isinstance(n, int) and 30000 <= n <= 32767 for n in node_ports), node_ports
    # Settled: another reconcile writes nothing and the allocation stays.
    assert reconcile_gateways(store) == 0
    again = store.peek("Service", "web", "cilium-gateway-gw")
    assert again is not None and [p.get("nodePort") for p in again["spec"]["ports"]] == node_ports


def _gateway(store: Store, spec_extra: dict[str, object]) -> None:
    store.create(by_kind("Namespace"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    store.create(
        by_kind("Gateway"),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "web"},
            "spec": {
                "gatewayClassName": "cilium",
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                **spec_extra,
            },
        },
    )


def test_infrastructure_labels_and_annotations_reach_the_gateway_service(tmp_path: Path) -> None:
    """GatewayInfrastructurePropagation: spec.infrastructure.labels/annotations on the generated Service."""
    store = Store(tmp_path)
    bootstrap(store, nodes=1)
    _gateway(store, {"infrastructure": {"labels": {"team": "a"}, "annotations": {"cost-center": "42"}}})
    reconcile_gateways(store)
    svc = store.peek("Service", "web", "cilium-gateway-gw")
    assert svc is not None
    assert svc["metadata"]["labels"]["team"] == "a"
    assert svc["metadata"]["annotations"]["cost-center"] == "42"


def test_static_addresses(tmp_path: Path) -> None:
    """GatewayStaticAddresses: a requested IPAddress becomes the Service's address."""
    store = Store(tmp_path)
    bootstrap(store, nodes=1)
    _gateway(store, {"addresses": [{"type": "IPAddress", "value": "127.0.100.77"}]})
    reconcile_gateways(store)
    ipam = LbIpam("127.0.100.0/24")
    ipam.reconcile(store)
    svc = store.peek("Service", "web", "cilium-gateway-gw")
    assert svc is not None
    assert svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.100.77"
