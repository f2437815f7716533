"""The L7 policy translation on its own: which nodes get listeners, what the RBAC rules say, and
that bad objects never break it (no Envoy, no kernel)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from services.xds.translate import CLUSTER, LISTENER, TranslateInput, translate
from services.xds.translate.l7policy import has_http_rules

NS = {"kind": "Namespace", "metadata": {"name": "default"}}


def node(name: str, addr: str | None) -> dict[str, Any]:
    st = {"addresses": [{"type": "InternalIP", "address": addr}]} if addr else {}
    return {"kind": "Node", "metadata": {"name": name}, "status": st}


def pod(name: str, ip: str, node_name: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": name}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}],
        },
        "status": {"podIP": ip},
    }


def cnp(
    name: str = "l7", http: list[dict[str, Any]] | None = None, section: str = "ingress"
) -> dict[str, Any]:
    peer = "fromEndpoints" if section == "ingress" else "toEndpoints"
    sel, other = ("b", "a") if section == "ingress" else ("a", "b")
    port: dict[str, Any] = {"ports": [{"port": "8080", "protocol": "TCP"}]}
    if http is not None:
        port["rules"] = {"http": http}
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": sel}},
            section: [{peer: [{"matchLabels": {"app": other}}], "toPorts": [port]}],
        },
    }


def run(*objs: dict[str, Any], als: str = "") -> Any:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    return translate(TranslateInput(objects=by_kind, nodes=("n1", "n2"), now="t", access_log_cluster=als))


def as_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


BASE = (
    NS,
    node("n1", "127.0.50.1"),
    node("n2", "127.0.50.2"),
    pod("a", "10.1.2.2", "n2"),
    pod("b", "10.1.1.3", "n1"),
)
GET_PUBLIC = [
    {"method": "GET", "path": "/public.*", "headers": ["X-Team: blue", "X-Trace"], "host": "b\\.local"}
]


def from_c(http: list[dict[str, Any]]) -> dict[str, Any]:
    """b's ingress from a third pod c with other HTTP rules than a's."""
    obj = cnp("l7c", http=http)
    obj["spec"]["ingress"][0]["fromEndpoints"] = [{"matchLabels": {"app": "c"}}]
    return obj


def test_ingress_rules_become_the_destination_nodes_listener() -> None:
    # a and c have different HTTP rules: Envoy tells them apart by address
    t = run(*BASE, pod("c", "10.1.2.4", "n2"), cnp(http=GET_PUBLIC), from_c([{"path": "/c"}]))
    n1 = t.for_node("n1")
    lst = as_dict(n1[LISTENER]["nodemesh-l7-policy-ingress"])
    assert lst["address"]["socket_address"] == {"address": "127.0.50.1", "port_value": 10001}
    assert lst["transparent"] is True
    assert [f["name"] for f in lst["listener_filters"]] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.original_src",
    ]
    assert lst["listener_filters"][1]["typed_config"]["mark"] == 0x0A00
    (chain,) = lst["filter_chains"]
    assert chain["filter_chain_match"]["prefix_ranges"] == [{"address_prefix": "10.1.1.3", "prefix_len": 32}]
    hcm = chain["filters"][0]["typed_config"]
    policies = hcm["http_filters"][0]["typed_config"]["rules"]["policies"].values()
    # the peer is pod a (on the other node), by address
    a_principal = {
        "or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.1.2.2", "prefix_len": 32}}]}
    }
    (policy,) = [p for p in policies if p["principals"] == [a_principal]]
    rules = policy["permissions"][0]["and_rules"]["rules"]
    assert {"destination_port_range": {"start": 8080, "end": 8081}} in rules
    regexes = {
        r["header"]["name"]: r["header"]["string_match"]["safe_regex"]["regex"]
        for r in rules
        if "safe_regex" in r.get("header", {}).get("string_match", {})
    }
    assert regexes == {":method": "GET", ":path": "/public.*", ":authority": "b\\.local"}
    assert {"header": {"name": "x-team", "string_match": {"exact": "blue"}}} in rules
    assert {"header": {"name": "x-trace", "present_match": True}} in rules
    assert as_dict(n1[CLUSTER]["nodemesh-l7-policy-ingress"])["type"] == "ORIGINAL_DST"
    # node n2 hosts only the clients: no ingress listener there; nobody gets an egress one
    assert "nodemesh-l7-policy-ingress" not in t.for_node("n2").get(LISTENER, {})
    assert not any("egress" in name for name in n1[LISTENER])


def test_egress_rules_match_the_source_and_the_destination_address() -> None:
    t = run(*BASE, cnp(http=[{"path": "/x"}], section="egress"))
    lst = as_dict(t.for_node("n2")[LISTENER]["nodemesh-l7-policy-egress"])
    assert lst["address"]["socket_address"]["port_value"] == 10002
    # the upstream leg keeps the client's address only toward pods (whose programs return the
    # replies to Envoy): one chain for pod destinations with original_src, one for the rest
    assert [f["name"] for f in lst["listener_filters"]] == ["envoy.filters.listener.original_dst"]
    pods_chain, chain = lst["filter_chains"]
    for c in (pods_chain, chain):
        assert c["filter_chain_match"]["source_prefix_ranges"] == [
            {"address_prefix": "10.1.2.2", "prefix_len": 32}
        ]
    assert pods_chain["filter_chain_match"]["prefix_ranges"] == [
        {"address_prefix": "10.1.1.3", "prefix_len": 32},
        {"address_prefix": "10.1.2.2", "prefix_len": 32},
    ]
    assert "prefix_ranges" not in chain["filter_chain_match"]
    filters = [f["name"] for f in pods_chain["filters"][0]["typed_config"]["http_filters"]]
    assert filters == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.original_src",
        "envoy.filters.http.router",
    ]
    assert pods_chain["filters"][0]["typed_config"]["http_filters"][1]["typed_config"]["mark"] == 0x0B00
    assert "envoy.filters.http.original_src" not in str(chain)
    (policy,) = chain["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["rules"][
        "policies"
    ].values()
    assert policy["principals"] == [{"any": True}]
    rules = policy["permissions"][0]["and_rules"]["rules"]
    # one peer (one rule set): the programs' redirect already chose the destination (below)
    assert not any("destination_ip" in str(r) for r in rules)
    # two destinations with different rules: told apart by the destination address
    c = pod("c", "10.1.1.4", "n1")
    to_c = cnp("l7c", http=[{"path": "/c"}], section="egress")
    to_c["spec"]["egress"][0]["toEndpoints"] = [{"matchLabels": {"app": "c"}}]
    t = run(*BASE, c, cnp(http=[{"path": "/x"}], section="egress"), to_c)
    chain = as_dict(t.for_node("n2")[LISTENER]["nodemesh-l7-policy-egress"])["filter_chains"][1]
    policies = chain["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["rules"]["policies"]
    dests = [p["permissions"][0]["and_rules"]["rules"][1] for p in policies.values()]
    assert sorted(str(d) for d in dests) == sorted(
        str({"or_rules": {"rules": [{"destination_ip": {"address_prefix": ip, "prefix_len": 32}}]}})
        for ip in ("10.1.1.3", "10.1.1.4")
    )


def test_one_rule_set_for_every_peer_leaves_the_peer_to_the_datapath() -> None:
    """All peers of the endpoint's port have the same HTTP rules: the RBAC matches anyone; the
    programs redirect only what an L7 entry allows, by the ipcache, which knows a new pod before the
    listener would (its first request is not refused for a stale address list)."""
    t = run(*BASE, pod("c", "10.1.2.4", "n2", app="a"), cnp(http=GET_PUBLIC))
    lst = as_dict(t.for_node("n1")[LISTENER]["nodemesh-l7-policy-ingress"])
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    (policy,) = hcm["http_filters"][0]["typed_config"]["rules"]["policies"].values()
    assert policy["principals"] == [{"any": True}]
    assert {"destination_port_range": {"start": 8080, "end": 8081}} in policy["permissions"][0]["and_rules"][
        "rules"
    ]


def test_access_log_only_when_asked_and_no_listener_without_http_rules() -> None:
    t = run(*BASE, cnp(http=GET_PUBLIC), als="nodemesh-als")
    hcm = as_dict(t.for_node("n1")[LISTENER]["nodemesh-l7-policy-ingress"])["filter_chains"][0]["filters"][0]
    assert hcm["typed_config"]["access_log"][0]["typed_config"]["common_config"]["grpc_service"] == {
        "envoy_grpc": {"cluster_name": "nodemesh-als"}
    }
    plain = run(*BASE, cnp(http=None))
    assert not any("l7-policy" in n for n in plain.for_node("n1").get(LISTENER, {}))
    assert not has_http_rules(cnp(http=None)) and has_http_rules(cnp(http=[{}]))


def test_bad_objects_never_break_the_translation() -> None:
    bad_policy = {
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": "x",
    }
    worse_policy = cnp("worse", http=[{"method": 5}])
    bad_pods = [
        {
            "kind": "Pod",
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": "x",
            "status": {"podIP": "10.1.1.9"},
        },
        {
            "kind": "Pod",
            "metadata": {"name": "p2"},
            "spec": {"nodeName": "n1"},
            "status": {"podIP": "not-an-ip"},
        },
        {"kind": "Pod", "metadata": "x"},
    ]
    nodes = [node("n3", None), {"kind": "Node", "metadata": {"name": "n4"}, "status": {"addresses": "x"}}]
    t = run(*BASE, bad_policy, worse_policy, *bad_pods, *nodes, cnp(http=GET_PUBLIC))
    # the good policy is still there, and only that one
    lst = as_dict(t.for_node("n1")[LISTENER]["nodemesh-l7-policy-ingress"])
    assert len(lst["filter_chains"]) == 1
    assert not t.node_resources.get("n3") and not t.node_resources.get("n4")
    assert not has_http_rules({"spec": {"ingress": "x"}}) and not has_http_rules("x")
