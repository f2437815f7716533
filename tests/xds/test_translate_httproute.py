"""HTTPRoute/GRPCRoute → Envoy RouteConfiguration, table-driven (no gRPC, no Envoy)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from conformance import objects as o
from services.xds.translate import CLUSTER, ENDPOINT, ROUTE, TranslateInput, translate

NS = "infra"
RC = f"{NS}/cilium-gateway-gw/listener-insecure-80"


def _routes(
    rules: list[dict[str, Any]],
    hostnames: list[str] | None = None,
    kind: str = "HTTPRoute",
    listener: dict[str, Any] | None = None,
    extra: tuple[dict[str, Any], ...] = (),
) -> list[dict[str, Any]]:
    """The routes of the single virtual host serving ``hostnames`` (JSON form)."""
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [listener or {"name": "http", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.service("v2", NS, [("http", 8080, 3000)]),
        o.service("v3", NS, [("http", 8080, 3000)]),
        o.route(
            kind, "r", NS, {"parentRefs": [{"name": "gw"}], "rules": rules, "hostnames": hostnames or []}
        ),
        *extra,
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    (rc_msg,) = t.resources[ROUTE].values()
    rc = json_format.MessageToDict(rc_msg)
    vhosts = [v for v in rc["virtualHosts"] if v.get("routes")]
    assert len(vhosts) == 1, vhosts
    return list(vhosts[0]["routes"])


def _b(name: str = "v1", weight: int | None = None, **kw: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": 8080, **kw}
    if weight is not None:
        ref["weight"] = weight
    return ref


C1, C2, C3 = (f"{NS}:v{i}:8080" for i in (1, 2, 3))


@pytest.mark.parametrize(
    ("match", "envoy_match"),
    [
        ({"path": {"type": "Exact", "value": "/one"}}, {"path": "/one"}),
        ({"path": {"type": "PathPrefix", "value": "/v2"}}, {"pathSeparatedPrefix": "/v2"}),
        ({"path": {"type": "PathPrefix", "value": "/v2/"}}, {"pathSeparatedPrefix": "/v2"}),
        ({"path": {"type": "PathPrefix", "value": "/"}}, {"prefix": "/"}),
        ({}, {"prefix": "/"}),
        (
            {"path": {"type": "RegularExpression", "value": "/r[0-9]+"}},
            {"safeRegex": {"googleRe2": {}, "regex": "/r[0-9]+"}},
        ),
        (
            {"headers": [{"name": "Version", "value": "one"}, {"name": "version", "value": "ignored"}]},
            {"prefix": "/", "headers": [{"name": "version", "stringMatch": {"exact": "one"}}]},
        ),
        (
            {"queryParams": [{"name": "animal", "value": "whale"}]},
            {"prefix": "/", "queryParameters": [{"name": "animal", "stringMatch": {"exact": "whale"}}]},
        ),
        (
            {"method": "post"},
            {"prefix": "/", "headers": [{"name": ":method", "stringMatch": {"exact": "POST"}}]},
        ),
    ],
)
def test_matches(match: dict[str, Any], envoy_match: dict[str, Any]) -> None:
    (r,) = _routes([{"matches": [match], "backendRefs": [_b()]}])
    assert r["match"] == envoy_match
    assert r["route"]["cluster"] == C1


def test_precedence_exact_regex_prefix_method_headers_query() -> None:
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [_b()]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": [_b()]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}], "backendRefs": [_b()]},
        {
            "matches": [
                {"path": {"type": "PathPrefix", "value": "/"}, "queryParams": [{"name": "q", "value": "1"}]}
            ],
            "backendRefs": [_b()],
        },
        {
            "matches": [
                {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": "h", "value": "1"}]}
            ],
            "backendRefs": [_b()],
        },
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}, "method": "GET"}], "backendRefs": [_b()]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/x.*"}}], "backendRefs": [_b()]},
        {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": [_b()]},
        {"matches": [{"path": {"type": "Exact", "value": "/a/b/c"}}], "backendRefs": [_b()]},
    ]
    order = [json.dumps(r["match"]) for r in _routes(rules)]
    keys = [
        "/a/b/c",
        '"path": "/a"',
        "safeRegex",
        "/a/b",
        '"pathSeparatedPrefix": "/a"',
        ":method",
        '"h"',
        "queryParameters",
        '{"prefix": "/"}',
    ]
    for i, k in enumerate(keys):
        assert k in order[i], (i, k, order)


def test_older_route_wins_ties_then_rule_order() -> None:
    newer = o.route(
        "HTTPRoute",
        "a-newer",
        NS,
        {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [_b("v3")]}]},
        created="2024-02-01T00:00:00Z",
    )
    rules = [{"backendRefs": [_b("v1")]}, {"backendRefs": [_b("v2")]}]
    routes = _routes(rules, extra=(newer,))
    assert [r["route"]["cluster"] for r in routes] == [C1, C2, C3]


def test_weights_including_zero() -> None:
    (r,) = _routes([{"backendRefs": [_b("v1", 70), _b("v2", 30), _b("v3", 0)]}])
    clusters = r["route"]["weightedClusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in clusters] == [(C1, 70), (C2, 30)]


def test_all_zero_weights_and_no_backends_answer_500() -> None:
    (r,) = _routes([{"backendRefs": [_b("v1", 0)]}])
    assert r["directResponse"] == {"status": 500}
    (r,) = _routes([{"matches": [{"path": {"type": "Exact", "value": "/x"}}]}])
    assert r["directResponse"] == {"status": 500}


def test_unresolvable_backend_answers_500() -> None:
    (r,) = _routes([{"backendRefs": [_b("missing")]}])
    assert r["directResponse"] == {"status": 500}


def test_header_modifiers_rule_and_backend_level() -> None:
    filt = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {
            "set": [{"name": "X-Set", "value": "s"}],
            "add": [{"name": "X-Add", "value": "a"}],
            "remove": ["X-Rm"],
        },
    }
    resp = {
        "type": "ResponseHeaderModifier",
        "responseHeaderModifier": {"set": [{"name": "X-R", "value": "1"}], "remove": ["X-Gone"]},
    }
    be = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"add": [{"name": "Backend", "value": "v1"}]},
    }
    (r,) = _routes([{"filters": [filt, resp], "backendRefs": [_b("v1", filters=[be])]}])
    adds = {
        (h["header"]["key"], h.get("appendAction", "APPEND_IF_EXISTS_OR_ADD"))
        for h in r["requestHeadersToAdd"]
    }
    assert adds == {("X-Set", "OVERWRITE_IF_EXISTS_OR_ADD"), ("X-Add", "APPEND_IF_EXISTS_OR_ADD")}
    assert r["requestHeadersToRemove"] == ["X-Rm"]
    assert r["responseHeadersToAdd"][0]["header"] == {"key": "X-R", "value": "1"}
    assert r["responseHeadersToRemove"] == ["X-Gone"]
    (wc,) = r["route"]["weightedClusters"]["clusters"]
    assert wc["requestHeadersToAdd"][0]["header"] == {"key": "Backend", "value": "v1"}


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        ({"hostname": "example.org"}, {"hostRedirect": "example.org", "responseCode": "FOUND"}),
        ({"statusCode": 301}, {}),
        ({"scheme": "https"}, {"schemeRedirect": "https", "portRedirect": 443, "responseCode": "FOUND"}),
        ({"port": 8083}, {"portRedirect": 8083, "responseCode": "FOUND"}),
        ({"statusCode": 303}, {"responseCode": "SEE_OTHER"}),
        ({"statusCode": 307}, {"responseCode": "TEMPORARY_REDIRECT"}),
        ({"statusCode": 308}, {"responseCode": "PERMANENT_REDIRECT"}),
        (
            {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/full"}},
            {"pathRedirect": "/full", "responseCode": "FOUND"},
        ),
    ],
)
def test_redirects(redirect: dict[str, Any], expected: dict[str, Any]) -> None:
    (r,) = _routes([{"filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]}])
    assert r["redirect"] == expected


def test_redirect_keeps_listener_port_when_scheme_unchanged() -> None:
    (r,) = _routes(
        [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "x.org"}}]}],
        listener={"name": "http", "port": 8080, "protocol": "HTTP"},
    )
    assert r["redirect"]["portRedirect"] == 8080


def test_redirect_prefix_replacement() -> None:
    rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/original-prefix"}}],
        "filters": [
            {
                "type": "RequestRedirect",
                "requestRedirect": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}
                },
            }
        ],
    }
    (r,) = _routes([rule])
    assert r["redirect"]["regexRewrite"] == {
        "pattern": {"googleRe2": {}, "regex": "^/original\\-prefix"},
        "substitution": "/replacement-prefix",
    }


@pytest.mark.parametrize(
    ("prefix", "replace", "regex", "sub"),
    [
        ("/prefix/one", "/one", "^/prefix/one", "/one"),
        ("/strip-prefix", "/", "^/strip\\-prefix/*", "/"),
        ("/strip-prefix/", "", "^/strip\\-prefix/*", "/"),
    ],
)
def test_url_rewrite_prefix(prefix: str, replace: str, regex: str, sub: str) -> None:
    rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
        "filters": [
            {
                "type": "URLRewrite",
                "urlRewrite": {
                    "hostname": "new.host",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replace},
                },
            }
        ],
        "backendRefs": [_b()],
    }
    (r,) = _routes([rule])
    assert r["route"]["hostRewriteLiteral"] == "new.host"
    assert r["route"]["regexRewrite"] == {"pattern": {"googleRe2": {}, "regex": regex}, "substitution": sub}


def test_url_rewrite_full_path() -> None:
    rule = {
        "filters": [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}},
            }
        ],
        "backendRefs": [_b()],
    }
    (r,) = _routes([rule])
    assert r["route"]["regexRewrite"]["substitution"] == "/one"


def test_mirrors_and_percentages() -> None:
    filters = [
        {"type": "RequestMirror", "requestMirror": {"backendRef": _b("v2")}},
        {"type": "RequestMirror", "requestMirror": {"backendRef": _b("v3"), "percent": 20}},
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": _b("v3"), "fraction": {"numerator": 1, "denominator": 4}},
        },
    ]
    (r,) = _routes([{"filters": filters, "backendRefs": [_b()]}])
    pols = r["route"]["requestMirrorPolicies"]
    assert [p["cluster"] for p in pols] == [C2, C3, C3]
    nums = [p["runtimeFraction"]["defaultValue"]["numerator"] for p in pols]
    assert nums == [1_000_000, 200_000, 250_000]


def test_timeouts_take_the_smaller() -> None:
    (r,) = _routes([{"timeouts": {"request": "10s", "backendRequest": "500ms"}, "backendRefs": [_b()]}])
    assert r["route"]["timeout"] == "0.500s"


def test_clusters_and_endpoints_for_used_backends_only_ready() -> None:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [{"name": "h", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.service("unused", NS, [("http", 8080, 3000)]),
        o.endpoint_slice("v1", NS, [("http", 3000)], ["10.0.0.1", "10.0.0.2"], not_ready=["10.0.0.3"]),
        o.httproute("r", NS, "gw", [{"backendRefs": [_b()]}]),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    assert set(t.resources[CLUSTER]) == {C1}
    cla = json_format.MessageToDict(t.resources[ENDPOINT][f"{NS}/v1:8080"])
    addrs = [e["endpoint"]["address"]["socketAddress"] for e in cla["endpoints"][0]["lbEndpoints"]]
    assert addrs == [{"address": "10.0.0.1", "portValue": 3000}, {"address": "10.0.0.2", "portValue": 3000}]
    c = json_format.MessageToDict(t.resources[CLUSTER][C1])
    assert c["type"] == "EDS" and c["edsClusterConfig"]["serviceName"] == f"{NS}/v1:8080"


def test_hostname_intersection_builds_vhosts() -> None:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [{"name": "h", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.httproute(
            "r", NS, "gw", [{"backendRefs": [_b()]}], hostnames=["a.example.com", "other.org", "*.com"]
        ),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    rc = json_format.MessageToDict(t.resources[ROUTE][RC])
    served = {v["name"]: bool(v.get("routes")) for v in rc["virtualHosts"]}
    assert served == {"a.example.com": True, "*.example.com": True}
    assert rc["ignorePortInHostMatching"] is True


@pytest.mark.parametrize(
    ("method", "envoy_match"),
    [
        ({"service": "pkg.Svc", "method": "Echo"}, {"path": "/pkg.Svc/Echo"}),
        ({"service": "pkg.Svc"}, {"pathSeparatedPrefix": "/pkg.Svc"}),
        ({"method": "Echo"}, {"safeRegex": {"googleRe2": {}, "regex": "/[^/]+/Echo"}}),
        (
            {"type": "RegularExpression", "service": "pkg\\..*", "method": "Echo.*"},
            {"safeRegex": {"googleRe2": {}, "regex": "/pkg\\..*/Echo.*"}},
        ),
    ],
)
def test_grpcroute_method_matches(method: dict[str, Any], envoy_match: dict[str, Any]) -> None:
    (r,) = _routes([{"matches": [{"method": method}], "backendRefs": [_b()]}], kind="GRPCRoute")
    assert r["match"] == envoy_match


def test_grpcroute_backend_cluster_speaks_h2() -> None:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [{"name": "h", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        o.service("v1", NS, [("grpc", 8080, 3000)]),
        o.route("GRPCRoute", "g", NS, {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [_b()]}]}),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    c = json_format.MessageToDict(t.resources[CLUSTER][C1])
    opts = c["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2ProtocolOptions" in opts["explicitHttpConfig"]


def test_invalid_regex_rejects_route() -> None:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [{"name": "h", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.httproute(
            "r",
            NS,
            "gw",
            [{"matches": [{"path": {"type": "RegularExpression", "value": "(("}}], "backendRefs": [_b()]}],
        ),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    (st,) = [s for s in t.statuses if s.kind == "HTTPRoute"]
    (acc,) = [c for c in st.status["parents"][0]["conditions"] if c["type"] == "Accepted"]
    assert (acc["status"], acc["reason"]) == ("False", "UnsupportedValue")


def test_invalid_backend_keeps_its_share_as_500() -> None:
    (r,) = _routes([{"backendRefs": [_b("v1", 3), _b("missing", 1)]}])
    clusters = r["route"]["weightedClusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in clusters] == [(C1, 3), ("nodemesh/invalid-backend", 1)]
    assert r["route"]["clusterNotFoundResponseCode"] == "INTERNAL_SERVER_ERROR"
