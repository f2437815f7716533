"""lb-l7 Services → each node's Envoy listener on its router IP (pure translation)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from conformance import objects as o
from nodemesh import lbl7
from services.xds.reconcile import build_snapshots
from services.xds.translate import CLUSTER, LISTENER, ROUTE, TranslateInput, Translation, translate

NS = "shop"


def node(name: str, cidr: str) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr}}


def l7svc(algo: str | None = None, **extra: Any) -> dict[str, Any]:
    ann = {"service.cilium.io/lb-l7": "enabled"}
    if algo is not None:
        ann["service.cilium.io/lb-l7-algorithm"] = algo
    s = o.service("echo", NS, [("http", 80, 3000)], cluster_ip="10.96.0.10", annotations=ann)
    s["metadata"].update(extra)
    return s


def _t(*objs: dict[str, Any]) -> Translation:
    nodes = [node("node-1", "10.244.1.0/24"), node("node-2", "10.244.2.0/24")]
    return translate(
        TranslateInput(objects=o.inputs(o.namespace(NS), *nodes, *objs), access_log_cluster="als")
    )


def _port() -> int:
    return lbl7.assign(lbl7.claims(l7svc())).ports[lbl7.PortKey(NS, "echo", 80)]


def test_each_node_gets_a_listener_on_its_router_ip_with_the_rule_s_port() -> None:
    t = _t(l7svc())
    assert t.errors == []
    name = f"{NS}/echo/lb-l7-80/node"
    assert name not in t.resources[LISTENER]  # not shared: each node's own address
    snaps = build_snapshots(t)
    for n, router in (("node-1", "10.244.1.1"), ("node-2", "10.244.2.1")):
        lst = json_format.MessageToDict(snaps.for_node(n).resources(LISTENER)[name].message)
        assert lst["address"]["socketAddress"] == {"address": router, "portValue": _port()}
        assert lst["freebind"] is True
        hcm = lst["filterChains"][0]["filters"][0]["typedConfig"]
        assert hcm["rds"]["routeConfigName"] == f"{NS}/echo/lb-l7-80"
        tags = hcm["accessLog"][0]["typedConfig"]["commonConfig"]["customTags"]
        assert {"tag": "nodemesh.service", "literal": {"value": f"{NS}/echo"}} in tags
    rc = json_format.MessageToDict(t.resources[ROUTE][f"{NS}/echo/lb-l7-80"])
    assert rc["virtualHosts"][0]["routes"][0]["route"]["cluster"] == f"{NS}:echo:80"
    assert (
        json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:echo:80"]).get("lbPolicy", "ROUND_ROBIN")
        == "ROUND_ROBIN"
    )


def test_algorithms() -> None:
    for algo, policy in (
        ("round_robin", "ROUND_ROBIN"),
        ("least_request", "LEAST_REQUEST"),
        ("random", "RANDOM"),
    ):
        t = _t(l7svc(algo))
        assert t.errors == []
        assert (
            json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:echo:80"]).get("lbPolicy", "ROUND_ROBIN")
            == policy
        )


def test_an_invalid_algorithm_is_reported_and_round_robin_serves() -> None:
    t = _t(l7svc("fastest"))
    assert t.errors == [
        f"Service {NS}/echo: service.cilium.io/lb-l7-algorithm 'fastest' is not one of "
        "round_robin, least_request, random; using round_robin"
    ]
    assert (
        json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:echo:80"]).get("lbPolicy", "ROUND_ROBIN")
        == "ROUND_ROBIN"
    )
    assert f"{NS}/echo/lb-l7-80/node" in build_snapshots(t).for_node("node-1").resources(LISTENER)


def test_a_load_balancer_address_keeps_its_shared_listener() -> None:
    s = l7svc()
    s["spec"]["type"] = "LoadBalancer"
    s["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.100.9"}]}}
    t = _t(s)
    lst = json_format.MessageToDict(t.resources[LISTENER][f"{NS}/echo/lb-l7-80"])
    assert lst["address"]["socketAddress"] == {"address": "127.0.100.9", "portValue": 80}
    node1 = build_snapshots(t).for_node("node-1").resources(LISTENER)
    assert {f"{NS}/echo/lb-l7-80", f"{NS}/echo/lb-l7-80/node"} <= set(node1)


def test_without_the_annotation_no_listener() -> None:
    s = l7svc()
    s["metadata"]["annotations"] = {}
    t = _t(s)
    assert not any("lb-l7" in n for n in t.resources[LISTENER])
    assert not t.node_resources


def test_colliding_ports_are_told_apart_and_noted() -> None:
    seen: dict[int, str] = {}
    for i in range(100000):
        p = lbl7.preferred_port(lbl7.PortKey(NS, f"s{i}", 80))
        if p in seen:
            a, b = seen[p], f"s{i}"
            break
        seen[p] = f"s{i}"
    sa, sb = (o.service(n, NS, [("http", 80, 3000)], cluster_ip=ip, annotations={lbl7.ANNOTATION: "enabled"})
              for n, ip in ((a, "10.96.0.11"), (b, "10.96.0.12")))  # fmt: skip
    sa["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    sb["metadata"]["creationTimestamp"] = "2026-01-01T00:00:05Z"
    t = _t(sa, sb)
    assert len(t.errors) == 1 and "using" in t.errors[0]
    res = build_snapshots(t).for_node("node-1").resources(LISTENER)
    ports = {
        json_format.MessageToDict(res[f"{NS}/{n}/lb-l7-80/node"].message)["address"]["socketAddress"][
            "portValue"
        ]
        for n in (a, b)
    }
    assert len(ports) == 2
