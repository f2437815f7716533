"""The Gateway controller's LoadBalancer Service settles: admission allocates its nodePorts, and the
controller keeps them instead of writing the ports without them on every reconcile (an endless
update loop that starved the other controllers and kept a Gateway without an address)."""

from __future__ import annotations

from pathlib import Path

from localcluster.apiserver.controllers.bootstrap import bootstrap
from localcluster.apiserver.controllers.gateway import reconcile_gateways
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
