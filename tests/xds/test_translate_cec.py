"""CiliumEnvoyConfig / CiliumClusterwideEnvoyConfig: decoding, Cilium's name qualification, nodeSelector."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from conformance import objects as o
from services.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, TranslateInput, Translation, translate

NS = "team"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def cec(name: str, resources: list[dict[str, Any]], ns: str = NS, **spec: Any) -> dict[str, Any]:
    kind = "CiliumEnvoyConfig" if ns else "CiliumClusterwideEnvoyConfig"
    meta: dict[str, Any] = {"name": name, "generation": 1}
    if ns:
        meta["namespace"] = ns
    return {
        "apiVersion": "cilium.io/v2",
        "kind": kind,
        "metadata": meta,
        "spec": {"resources": resources, **spec},
    }


LISTENER_RES = {
    "@type": LISTENER,
    "name": "envoy-lb-listener",
    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10080}},
    "filterChains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typedConfig": {
                        "@type": HCM,
                        "statPrefix": "lb",
                        "rds": {"routeConfigName": "lb-route"},
                        "httpFilters": [
                            {"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}
                        ],
                    },
                }
            ]
        }
    ],
}
ROUTE_RES = {
    "@type": ROUTE,
    "name": "lb-route",
    "virtualHosts": [
        {
            "name": "vh",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "route": {
                        "weightedClusters": {
                            "clusters": [
                                {"name": "echo-1", "weight": 50},
                                {"name": "team/echo-2:80", "weight": 50},
                            ]
                        }
                    },
                }
            ],
        }
    ],
}
CLUSTER_RES = {
    "@type": CLUSTER,
    "name": "echo-1",
    "type": "EDS",
    "edsClusterConfig": {"serviceName": "team/echo-1:80"},
}


def _t(*objs: dict[str, Any], nodes: tuple[str, ...] = ()) -> Translation:
    base = [
        o.service("echo-1", NS, [("http", 80, 3000)]),
        o.endpoint_slice("echo-1", NS, [("http", 3000)], ["10.1.0.5"]),
    ]
    return translate(TranslateInput(objects=o.inputs(*base, *objs), nodes=nodes))


def test_names_and_references_are_qualified() -> None:
    t = _t(cec("lb", [LISTENER_RES, ROUTE_RES, CLUSTER_RES]))
    assert t.errors == []
    lst = json_format.MessageToDict(t.resources[LISTENER]["team/lb/envoy-lb-listener"])
    hcm = lst["filterChains"][0]["filters"][0]["typedConfig"]
    assert hcm["rds"]["routeConfigName"] == "team/lb/lb-route"
    assert "ads" in hcm["rds"]["configSource"]
    rc = json_format.MessageToDict(t.resources[ROUTE]["team/lb/lb-route"])
    names = [c["name"] for c in rc["virtualHosts"][0]["routes"][0]["route"]["weightedClusters"]["clusters"]]
    assert names == ["team/lb/echo-1", "team/echo-2:80"]  # already-qualified names are left alone
    c = json_format.MessageToDict(t.resources[CLUSTER]["team/lb/echo-1"])
    assert c["edsClusterConfig"]["serviceName"] == "team/echo-1:80"


def test_clusterwide_names_have_no_namespace() -> None:
    t = _t(cec("global", [CLUSTER_RES], ns=""))
    assert "global/echo-1" in t.resources[CLUSTER]


def test_backend_services_get_endpoints() -> None:
    t = _t(cec("lb", [CLUSTER_RES], backendServices=[{"name": "echo-1", "namespace": NS}]))
    cla = json_format.MessageToDict(t.resources[ENDPOINT]["team/echo-1:80"])
    assert (
        cla["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]["address"] == "10.1.0.5"
    )


def test_node_selector_limits_resources_to_matching_nodes() -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"edge": "true"}}}
    t = _t(
        node,
        cec("lb", [CLUSTER_RES], nodeSelector={"matchLabels": {"edge": "true"}}),
        nodes=("node-1", "node-2"),
    )
    assert "team/lb/echo-1" not in t.resources[CLUSTER]
    assert "team/lb/echo-1" in t.for_node("node-1")[CLUSTER]
    assert "team/lb/echo-1" not in t.for_node("node-2")[CLUSTER]


def test_bad_resources_are_reported_and_skipped() -> None:
    bad = [
        {"@type": "type.googleapis.com/envoy.config.listener.v3.Nope", "name": "x"},
        {"name": "no-type"},
        {"@type": CLUSTER, "name": "c", "connectTimeout": "not-a-duration"},
        {**LISTENER_RES, "address": None, "name": "no-address"},
        "not an object",
    ]
    t = _t(cec("bad", [*bad, CLUSTER_RES]))
    assert len(t.errors) == len(bad)
    assert all(e.startswith("CiliumEnvoyConfig team/bad: ") for e in t.errors)
    assert list(t.resources[CLUSTER]) == ["team/bad/echo-1"]
