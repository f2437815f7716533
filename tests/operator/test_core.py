"""The operator's pure core: the writes a cluster state asks for (no NATS, no API server)."""

from __future__ import annotations

from typing import Any

from services.operator.lbipam import CONFLICT, SATISFIED, lbipam_writes, selector_matches
from services.operator.reconcile import reconcile

NOW = "2026-01-01T00:00:00Z"
CLASS = {"metadata": {"name": "cilium"}, "spec": {"controllerName": "io.cilium/gateway-controller"}}


def pool(name: str, *blocks: dict[str, Any], ts: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": name, "creationTimestamp": ts},
        "spec": {"blocks": list(blocks), **spec},
    }


def lb(
    name: str,
    ts: str = "2026-01-01T00:00:01Z",
    ip: str = "",
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": name,
            "creationTimestamp": ts,
            "labels": labels or {},
        },
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], **spec},
    }
    if ip:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    return svc


def ips(writes: list[Any]) -> dict[str, str]:
    out = {}
    for w in writes:
        if w.kind == "Service" and w.op == "status":
            ing = w.obj["status"]["loadBalancer"].get("ingress") or [{}]
            out[w.name] = (ing[0] or {}).get("ip", "") if ing else ""
    return out


def cond(writes: list[Any], kind: str, name: str, typ: str) -> dict[str, Any]:
    for w in writes:
        if w.kind == kind and w.name == name and w.op == "status":
            for c in w.obj["status"].get("conditions") or []:
                if c["type"] == typ:
                    return dict(c)
    return {}


def test_first_and_last_addresses_are_skipped_and_allocation_is_oldest_first() -> None:
    w = lbipam_writes(
        [pool("p", {"cidr": "10.0.0.0/30"})], [lb("b", ts="2"), lb("a", ts="1"), lb("c", ts="3")], NOW
    )
    assert ips(w) == {"a": "10.0.0.1", "b": "10.0.0.2", "c": ""}
    assert cond(w, "Service", "c", SATISFIED)["reason"] == "out_of_ips"
    assert cond(w, "CiliumLoadBalancerIPPool", "p", "cilium.io/IPsAvailable")["message"] == "0"
    # allowFirstLastIPs: Yes gives out the whole CIDR; a start/stop range is always whole.
    w = lbipam_writes([pool("p", {"cidr": "10.0.0.0/30"}, allowFirstLastIPs="Yes")], [lb("a")], NOW)
    assert ips(w) == {"a": "10.0.0.0"}


def test_a_kept_address_writes_nothing_and_a_settled_state_is_quiet() -> None:
    svc = lb("a", ip="10.0.0.5")
    first = lbipam_writes([pool("p", {"start": "10.0.0.5", "stop": "10.0.0.6"})], [svc], NOW)
    assert ips(first) == {"a": "10.0.0.5"}
    # Apply what was written; a second pass (later time) has nothing to write.
    svc["status"] = first[0].obj["status"]
    p = pool("p", {"start": "10.0.0.5", "stop": "10.0.0.6"})
    p["status"] = next(w for w in first if w.kind != "Service").obj["status"]
    assert lbipam_writes([p], [svc], "2027-01-01T00:00:00Z") == []


def test_requested_addresses_are_given_only_from_a_matching_pool_and_when_free() -> None:
    p = pool("p", {"cidr": "10.0.0.0/24"})
    w = lbipam_writes(
        [p],
        [
            lb("a", ts="1", loadBalancerIP="10.0.0.9"),
            lb("b", ts="2", loadBalancerIP="10.0.0.9"),
            lb("c", ts="3", loadBalancerIP="192.168.0.1"),
        ],
        NOW,
    )
    assert ips(w) == {"a": "10.0.0.9", "b": "", "c": ""}
    assert cond(w, "Service", "b", SATISFIED)["reason"] == "already_allocated"
    assert cond(w, "Service", "c", SATISFIED)["reason"] == "no_pool"
    # The annotation is the same request; an address outside the request is given up for it.
    ann = lb("d", ip="10.0.0.1")
    ann["metadata"]["annotations"] = {"lbipam.cilium.io/ips": "10.0.0.20"}
    assert ips(lbipam_writes([p], [ann], NOW)) == {"d": "10.0.0.20"}


def test_selectors_conflicts_disabled_pools_and_classes() -> None:
    assert selector_matches(None, {})
    assert selector_matches(
        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {"a": "1"}
    )
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": "1"})
    assert not selector_matches("junk", {})
    blue = pool("blue", {"cidr": "10.1.0.0/24"}, ts="1", serviceSelector={"matchLabels": {"color": "blue"}})
    byname = pool(
        "byname",
        {"cidr": "10.2.0.0/24"},
        ts="2",
        serviceSelector={"matchLabels": {"io.kubernetes.service.name": "named"}},
    )
    clash = pool("clash", {"cidr": "10.1.0.128/25"}, ts="3")
    off = pool("off", {"cidr": "10.3.0.0/24"}, ts="4", disabled=True)
    svcs = [
        lb("b", labels={"color": "blue"}),
        lb("named"),
        lb("none"),
        lb("kept", ip="10.3.0.7"),
        lb("other-class", loadBalancerClass="example.com/lb"),
    ]
    w = lbipam_writes([blue, byname, clash, off], svcs, NOW)
    assert ips(w) == {"b": "10.1.0.1", "named": "10.2.0.1", "none": "", "kept": "10.3.0.7"}
    assert cond(w, "CiliumLoadBalancerIPPool", "clash", CONFLICT)["status"] == "True"
    assert cond(w, "CiliumLoadBalancerIPPool", "blue", CONFLICT)["status"] == "False"
    assert cond(w, "Service", "none", SATISFIED)["reason"] == "no_pool"


def test_bad_pools_and_services_are_conditions_not_crashes() -> None:
    bad = pool(
        "bad", {"cidr": "not-a-cidr"}, {"start": "10.0.0.9", "stop": "10.0.0.1"}, {"cidr": "10.5.0.0/30"}
    )
    junk_svc: dict[str, Any] = {"metadata": {"name": "j", "namespace": "default"}, "spec": "oops"}
    w = lbipam_writes([bad, {"metadata": {"name": "empty"}}], [lb("a"), junk_svc], NOW)
    assert ips(w) == {"a": "10.5.0.1"}
    assert cond(w, "CiliumLoadBalancerIPPool", "bad", "nodemesh.io/InvalidBlocks")["status"] == "True"


def test_not_a_loadbalancer_any_more_releases_the_address() -> None:
    svc = lb("a", ip="10.0.0.1")
    svc["spec"]["type"] = "ClusterIP"
    (w, *_rest) = lbipam_writes([pool("p", {"cidr": "10.0.0.0/24"})], [svc], NOW)
    assert w.name == "a" and w.obj["status"]["loadBalancer"] == {"ingress": None}


def _state(**kinds: list[dict[str, Any]]) -> Any:
    base: dict[str, list[dict[str, Any]]] = {
        "Namespace": [{"metadata": {"name": "default"}}],
        "GatewayClass": [CLASS],
    }
    base.update(kinds)
    return lambda kind: base.get(kind, [])


def test_gateway_service_is_created_patched_without_losing_node_ports_and_deleted() -> None:
    gw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default", "uid": "g1"},
        "spec": {
            "gatewayClassName": "cilium",
            "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}],
            "addresses": [{"type": "IPAddress", "value": "10.0.0.7"}],
        },
    }
    (create,) = [w for w in reconcile(_state(Gateway=[gw]), NOW) if w.kind == "Service"]
    assert create.op == "create" and create.name == "cilium-gateway-gw"
    assert create.obj["metadata"]["annotations"]["lbipam.cilium.io/ips"] == "10.0.0.7"
    # As the API server stores it: nodePorts allocated, defaults filled in. Nothing to write.
    stored = {**create.obj, "metadata": {**create.obj["metadata"], "uid": "s1"}}
    stored["spec"] = {
        **stored["spec"],
        "clusterIP": "10.96.0.9",
        "ports": [{**p, "nodePort": 30080} for p in stored["spec"]["ports"]],
    }
    assert [w for w in reconcile(_state(Gateway=[gw], Service=[stored]), NOW) if w.op != "status"] == []
    # A listener added: one patch, keeping the allocated nodePort; static address dropped: annotation null.
    gw["spec"]["listeners"].append({"name": "s", "port": 443, "protocol": "HTTPS"})
    del gw["spec"]["addresses"]
    (patch,) = [w for w in reconcile(_state(Gateway=[gw], Service=[stored]), NOW) if w.op == "patch"]
    assert patch.uid == "s1"
    assert [(p["port"], p.get("nodePort")) for p in patch.obj["spec"]["ports"]] == [(80, 30080), (443, None)]
    assert patch.obj["metadata"]["annotations"] == {"lbipam.cilium.io/ips": None}
    # Another class: the Service goes; a user's Service of that name is never touched.
    gw["spec"]["gatewayClassName"] = "istio"
    (delete,) = [w for w in reconcile(_state(Gateway=[gw], Service=[stored]), NOW) if w.op == "delete"]
    assert delete.name == "cilium-gateway-gw" and delete.uid == "s1"
    user = {"metadata": {"name": "cilium-gateway-gw", "namespace": "default"}, "spec": {"ports": []}}
    gw["spec"]["gatewayClassName"] = "cilium"
    assert [w for w in reconcile(_state(Gateway=[gw], Service=[user]), NOW) if w.op != "status"] == []


def test_malformed_gateways_and_ingresses_are_skipped() -> None:
    objs = _state(
        Gateway=[
            {"metadata": {"name": "x"}},
            {"spec": "oops", "metadata": {"name": "y", "namespace": "default"}},
        ],
        Ingress=[{"metadata": {"name": 3}}, {"metadata": {"name": "i", "namespace": "default"}, "spec": "x"}],
    )
    assert reconcile(objs, NOW) == []
