"""Services + EndpointSlices → frontends and backends (pure; no root)."""

from __future__ import annotations

from typing import Any

from services.datapath.lb.model import (
    BE_ACTIVE,
    BE_TERMINATING,
    F_AFFINITY,
    F_CLUSTER_IP,
    F_EXTERNAL_IP,
    F_LOAD_BALANCER,
    F_LOCAL,
    F_NODE_PORT,
    Backend,
    Frontend,
)
from services.datapath.lb.plan import PlanContext, plan_all, plan_service

CTX = PlanContext(node="node-1", node_addresses={"node-1": "127.0.50.1", "node-2": "127.0.50.2"})


def svc(name: str = "web", **spec: Any) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.96.0.10")
    spec.setdefault("ports", [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}])
    return {"kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def ep(ip: str, node: str = "node-1", ready: bool | None = True, **cond: bool) -> dict[str, Any]:
    c: dict[str, Any] = dict(cond)
    if ready is not None:
        c["ready"] = ready
    return {"addresses": [ip], "conditions": c, "nodeName": node}


def es(name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
       service: str = "web") -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def test_cluster_ip_tcp_and_udp_ready_backends() -> None:
    s = svc(ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ])  # fmt: skip
    slices = [es("a", [ep("10.244.1.5"), ep("10.244.2.5", "node-2"), ep("10.244.1.6", ready=False)], ports=[
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "dns", "port": 5353, "protocol": "UDP"},
    ])]  # fmt: skip
    p = plan_all([s], slices, CTX)
    assert p.errors == []
    tcp = p.frontends[Frontend("10.96.0.10", 80, 6)]
    assert tcp.backends == (Backend("10.244.1.5", 8080, 6), Backend("10.244.2.5", 8080, 6))
    assert tcp.states == (BE_ACTIVE, BE_ACTIVE) and tcp.flags == F_CLUSTER_IP
    assert tcp.nodes == ("node-1", "node-2")
    udp = p.frontends[Frontend("10.96.0.10", 53, 17)]
    assert udp.backends == (Backend("10.244.1.5", 5353, 17), Backend("10.244.2.5", 5353, 17))


def test_named_target_port_resolves_per_slice() -> None:
    slices = [
        es("a", [ep("10.244.1.5")], ports=[{"name": "http", "port": 8080, "protocol": "TCP"}]),
        es("b", [ep("10.244.1.7")], ports=[{"name": "http", "port": 9090, "protocol": "TCP"}]),
    ]
    fp = plan_all([svc()], slices, CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == (Backend("10.244.1.5", 8080, 6), Backend("10.244.1.7", 9090, 6))


def test_terminating_fallback_only_without_ready_endpoints() -> None:
    term = ep("10.244.1.8", ready=False, serving=True, terminating=True)
    gone = ep("10.244.1.9", ready=False, serving=False, terminating=True)
    fp = plan_all([svc()], [es("a", [ep("10.244.1.5"), term, gone])], CTX).frontends
    assert fp[Frontend("10.96.0.10", 80, 6)].backends == (Backend("10.244.1.5", 8080, 6),)
    fp = plan_all([svc()], [es("a", [term, gone])], CTX).frontends
    only = fp[Frontend("10.96.0.10", 80, 6)]
    assert only.backends == (Backend("10.244.1.8", 8080, 6),) and only.states == (BE_TERMINATING,)


def test_nil_conditions_mean_ready_and_duplicates_collapse() -> None:
    slices = [es("a", [ep("10.244.1.5", ready=None)]), es("b", [ep("10.244.1.5", ready=False)])]
    fp = plan_all([svc()], slices, CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == (Backend("10.244.1.5", 8080, 6),) and fp.states == (BE_ACTIVE,)


def test_no_endpoints_is_a_frontend_without_backends() -> None:
    fp = plan_all([svc()], [es("a", [])], CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == ()


def test_internal_traffic_policy_local_keeps_this_nodes_backends() -> None:
    slices = [es("a", [ep("10.244.1.5"), ep("10.244.2.5", "node-2")])]
    s = svc(internalTrafficPolicy="Local")
    fp = plan_all([s], slices, CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.backends == (Backend("10.244.1.5", 8080, 6),) and fp.flags & F_LOCAL
    other = plan_all([s], slices, PlanContext("node-2", CTX.node_addresses)).frontends
    assert other[Frontend("10.96.0.10", 80, 6)].backends == (Backend("10.244.2.5", 8080, 6),)
    nowhere = plan_all([s], slices, PlanContext("node-3", CTX.node_addresses)).frontends
    assert nowhere[Frontend("10.96.0.10", 80, 6)].backends == ()


def test_node_port_on_every_node_address_external_policy_per_node() -> None:
    slices = [es("a", [ep("10.244.1.5"), ep("10.244.2.5", "node-2")])]
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]
    fes = plan_all([svc(type="NodePort", ports=ports)], slices, CTX).frontends
    n1, n2 = Frontend("127.0.50.1", 30080, 6), Frontend("127.0.50.2", 30080, 6)
    assert fes[n1].flags == F_NODE_PORT and len(fes[n1].backends) == 2 and len(fes[n2].backends) == 2
    local = plan_all(
        [svc(type="NodePort", ports=ports, externalTrafficPolicy="Local")], slices, CTX
    ).frontends
    # what a client reaching node N sees: N's backends, whichever node's maps hold the frontend
    assert local[n1].backends == (Backend("10.244.1.5", 8080, 6),)
    assert local[n2].backends == (Backend("10.244.2.5", 8080, 6),)
    assert not local[Frontend("10.96.0.10", 80, 6)].local  # eTP does not narrow the ClusterIP


def test_load_balancer_ingress_and_external_ips() -> None:
    s = svc(type="LoadBalancer", externalIPs=["192.0.2.7", "not-an-ip"])
    s["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.100.9"}, {"hostname": "x"}]}}
    fes = plan_all([s], [es("a", [ep("10.244.1.5")])], CTX).frontends
    assert fes[Frontend("127.0.100.9", 80, 6)].flags == F_LOAD_BALANCER
    assert fes[Frontend("192.0.2.7", 80, 6)].flags == F_EXTERNAL_IP
    assert Frontend("127.0.50.1", 30080, 6) not in fes  # no nodePort given: none (the API allocates it)


def test_session_affinity_client_ip_with_timeout() -> None:
    s = svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    fp = plan_all([s], [es("a", [ep("10.244.1.5")])], CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.flags & F_AFFINITY and fp.affinity_timeout == 60
    fp = plan_all([svc(sessionAffinity="ClientIP")], [], CTX).frontends[Frontend("10.96.0.10", 80, 6)]
    assert fp.affinity_timeout == 10800
    bad = svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}})
    sp = plan_service(bad, [], CTX)
    assert sp.frontends[Frontend("10.96.0.10", 80, 6)].affinity_timeout == 10800 and sp.errors


def test_not_load_balanced_headless_external_name_and_envoy_served() -> None:
    assert plan_service(svc(clusterIP="None"), [], CTX).skipped == "headless"
    assert plan_service(svc(type="ExternalName", externalName="x.example"), [], CTX).skipped
    gw = svc(type="LoadBalancer")
    gw["metadata"]["labels"] = {"io.cilium.gateway/owning-gateway": "gw"}
    assert plan_service(gw, [], CTX).frontends == {}
    shared = svc(type="LoadBalancer")
    shared["metadata"]["labels"] = {"cilium.io/ingress": "true"}  # the shared Ingress Service
    assert plan_service(shared, [], CTX).frontends == {}


def test_bad_input_gives_errors_not_exceptions() -> None:
    garbage: list[dict[str, Any]] = [
        {"kind": "Service", "metadata": {"name": "a"}, "spec": "nonsense"},
        svc("b", ports=[{"port": "eighty"}, {"port": 81, "protocol": "SCTP"}, "junk"]),
        svc("c", type="Weird"),
        {"kind": "Service"},
    ]
    slices: list[dict[str, Any]] = [{"metadata": "x"}, es("x", ["junk", {"addresses": "no"}], service="b")]
    p = plan_all(garbage, slices, CTX)
    assert p.frontends == {}
    assert any("eighty" in e for e in p.errors) and any("SCTP" in e for e in p.errors)
    assert any("Weird" in e for e in p.errors)


def test_two_services_one_frontend_first_keeps_it() -> None:
    a, b = svc("a", externalIPs=["192.0.2.1"]), svc("b", clusterIP="10.96.0.11", externalIPs=["192.0.2.1"])
    p = plan_all([b, a], [], CTX)
    assert p.frontends[Frontend("192.0.2.1", 80, 6)].service.name == "a"
    assert any("already belongs" in e for e in p.errors)
