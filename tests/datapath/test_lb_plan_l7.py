"""lb-l7 Services in the socket load-balancer's plan: the node's Envoy listener is the one backend."""

from __future__ import annotations

from typing import Any

from nodemesh import lbl7
from services.datapath.lb.model import BE_ACTIVE, F_CLUSTER_IP, F_L7, Backend, Frontend
from services.datapath.lb.plan import PlanContext, plan_all
from tests.datapath.test_lb_plan import ep, es, svc


def l7(**spec: Any) -> dict[str, Any]:
    s = svc(**spec)
    s["metadata"]["annotations"] = {"service.cilium.io/lb-l7": "enabled"}
    return s


def ctx(*services: dict[str, Any], node: str = "node-2", cidr: str = "10.244.2.0/24") -> PlanContext:
    ports = lbl7.assign(c for s in services for c in lbl7.claims(s)).ports
    return PlanContext(node=node, node_addresses={"node-1": "127.0.50.1", "node-2": "127.0.50.2"},
                       pod_cidr=cidr, l7_ports=ports)  # fmt: skip


def test_tcp_frontends_go_to_the_node_s_envoy_udp_is_balanced_at_the_socket() -> None:
    s = l7(type="NodePort", externalIPs=["192.0.2.7"], ports=[
        {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ])  # fmt: skip
    slices = [es("a", [ep("10.244.1.5"), ep("10.244.2.5", "node-2")], ports=[
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "dns", "port": 5353, "protocol": "UDP"},
    ])]  # fmt: skip
    c = ctx(s)
    port = c.l7_ports[lbl7.PortKey("default", "web", 80)]
    p = plan_all([s], slices, c)
    assert p.errors == []
    envoy = (Backend("10.244.2.1", port, 6),)
    for fe in (Frontend("10.96.0.10", 80, 6), Frontend("192.0.2.7", 80, 6), Frontend("127.0.50.1", 30080, 6)):
        fp = p.frontends[fe]
        assert fp.backends == envoy and fp.states == (BE_ACTIVE,)
        assert fp.l7_proxy_port == port and fp.flags & F_L7
    assert p.frontends[Frontend("10.96.0.10", 80, 6)].flags == F_CLUSTER_IP | F_L7
    udp = p.frontends[Frontend("10.96.0.10", 53, 17)]
    assert udp.backends == (Backend("10.244.1.5", 5353, 17), Backend("10.244.2.5", 5353, 17))
    assert not udp.flags & F_L7


def test_each_node_plans_its_own_router_ip() -> None:
    s = l7()
    one = plan_all([s], [], ctx(s, node="node-1", cidr="10.244.1.0/24")).frontends[
        Frontend("10.96.0.10", 80, 6)
    ]
    two = plan_all([s], [], ctx(s)).frontends[Frontend("10.96.0.10", 80, 6)]
    assert one.backends[0].addr == "10.244.1.1" and two.backends[0].addr == "10.244.2.1"
    assert one.backends[0].port == two.backends[0].port


def test_load_balancer_ingress_stays_untranslated_for_envoy() -> None:
    s = l7(type="LoadBalancer")
    s["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.100.9"}]}}
    p = plan_all([s], [], ctx(s))
    assert Frontend("127.0.100.9", 80, 6) not in p.frontends
    assert p.frontends[Frontend("10.96.0.10", 80, 6)].l7_proxy_port


def test_invalid_algorithm_is_an_error_and_still_l7() -> None:
    s = l7()
    s["metadata"]["annotations"]["service.cilium.io/lb-l7-algorithm"] = "fastest"
    p = plan_all([s], [], ctx(s))
    assert p.errors == [
        "Service default/web: service.cilium.io/lb-l7-algorithm 'fastest' is not one of round_robin, "
        "least_request, random; using round_robin"
    ]
    assert p.frontends[Frontend("10.96.0.10", 80, 6)].l7_proxy_port


def test_without_a_pod_cidr_the_service_is_balanced_at_the_socket_and_told() -> None:
    s = l7()
    p = plan_all([s], [es("a", [ep("10.244.1.5")])], ctx(s, cidr=""))
    fp = p.frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == (Backend("10.244.1.5", 8080, 6),) and not fp.l7_proxy_port
    assert len(p.errors) == 1 and "no pod CIDR" in p.errors[0]


def test_removing_the_annotation_returns_to_the_backends() -> None:
    s = svc()
    p = plan_all([s], [es("a", [ep("10.244.1.5")])], ctx(s))
    fp = p.frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == (Backend("10.244.1.5", 8080, 6),) and not fp.flags & F_L7
