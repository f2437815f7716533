"""Gateway and route status from translation (no gRPC, no Envoy): the spec's conditions and reasons."""

from __future__ import annotations

from typing import Any

import pytest

from conformance import objects as o
from conformance.certs import self_signed
from services.xds.translate import LISTENER, TranslateInput, Translation, translate, with_programmed

NS = "infra"
APP = "app"
PAIR = self_signed(["*.example.com", "example.com"])


def _base(*extra: dict[str, Any]) -> Translation:
    objs = [
        o.namespace(NS, {"role": "infra"}),
        o.namespace(APP, {"role": "app"}),
        o.gateway_class(),
        o.service("web", NS, [("http", 8080, 3000)]),
        o.endpoint_slice("web", NS, [("http", 3000)], ["10.0.0.1"]),
        *extra,
    ]
    return translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))


def _status(t: Translation, kind: str, name: str) -> dict[str, Any]:
    for s in t.statuses:
        if s.kind == kind and s.name == name:
            return s.status
    raise AssertionError(f"no status for {kind} {name}")


def _cond(conds: list[dict[str, Any]], ctype: str) -> tuple[str, str]:
    for c in conds:
        if c["type"] == ctype:
            return c["status"], c["reason"]
    raise AssertionError(f"no {ctype} in {conds}")


def _gw(listeners: list[dict[str, Any]], name: str = "gw") -> list[dict[str, Any]]:
    return [o.gateway(name, NS, listeners), o.lb_service(NS, f"cilium-gateway-{name}", "127.0.100.7")]


HTTP = {"name": "http", "port": 80, "protocol": "HTTP"}


def test_gatewayclass_accepted_only_for_our_controller() -> None:
    t = _base(o.gateway_class("other", "example.com/other"))
    assert _cond(_status(t, "GatewayClass", "nodemesh")["conditions"], "Accepted") == ("True", "Accepted")
    assert not [s for s in t.statuses if s.name == "other"]


def test_cilium_controller_name_is_accepted_too() -> None:
    t = _base(o.gateway_class("cilium", "io.cilium/gateway-controller"))
    assert _cond(_status(t, "GatewayClass", "cilium")["conditions"], "Accepted") == ("True", "Accepted")


def test_gateway_accepted_with_address_and_listener_status() -> None:
    t = _base(*_gw([HTTP]), o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "web", "port": 8080}]}]))
    st = _status(t, "Gateway", "gw")
    assert _cond(st["conditions"], "Accepted") == ("True", "Accepted")
    assert st["addresses"] == [{"type": "IPAddress", "value": "127.0.100.7"}]
    (lst,) = st["listeners"]
    assert lst["attachedRoutes"] == 1
    assert {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"} in lst["supportedKinds"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")
    info = t.gateways[f"{NS}/gw"]
    assert info.envoy_listeners == [f"{NS}/cilium-gateway-gw/listener-80"]
    assert info.envoy_listeners[0] in t.resources[LISTENER]
    # Programmed is the ADS side's to set, via with_programmed once Envoy ACKed.
    assert all(c["type"] != "Programmed" for c in st["conditions"])
    patched = with_programmed(t.statuses[info.status_patch_index], info, True).status
    assert _cond(patched["conditions"], "Programmed") == ("True", "Programmed")
    assert _cond(patched["listeners"][0]["conditions"], "Programmed") == ("True", "Programmed")


def test_gateway_without_address_gets_no_envoy_listener_and_not_programmed() -> None:
    t = _base(o.gateway("gw", NS, [HTTP]))
    info = t.gateways[f"{NS}/gw"]
    assert info.envoy_listeners == [] and not t.resources[LISTENER]
    patched = with_programmed(t.statuses[info.status_patch_index], info, True).status
    assert _cond(patched["conditions"], "Programmed") == ("False", "AddressNotAssigned")


@pytest.mark.parametrize(
    ("listener", "ctype", "expected", "kinds"),
    [
        ({"name": "x", "port": 80, "protocol": "UDP"}, "Accepted", ("False", "UnsupportedProtocol"), []),
        (
            {"name": "x", "port": 80, "protocol": "HTTP", "allowedRoutes": {"kinds": [{"kind": "FooRoute"}]}},
            "ResolvedRefs",
            ("False", "InvalidRouteKinds"),
            [],
        ),
        (
            {
                "name": "x",
                "port": 80,
                "protocol": "HTTP",
                "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}, {"kind": "TLSRoute"}]},
            },
            "ResolvedRefs",
            ("False", "InvalidRouteKinds"),
            ["HTTPRoute"],
        ),
        (
            {
                "name": "x",
                "port": 443,
                "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "missing"}]},
            },
            "ResolvedRefs",
            ("False", "InvalidCertificateRef"),
            ["HTTPRoute", "GRPCRoute"],
        ),
        (
            {
                "name": "x",
                "port": 443,
                "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"group": "example.com", "kind": "Secret", "name": "cert"}]},
            },
            "ResolvedRefs",
            ("False", "InvalidCertificateRef"),
            ["HTTPRoute", "GRPCRoute"],
        ),
        (
            {
                "name": "x",
                "port": 443,
                "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cert", "namespace": APP}]},
            },
            "ResolvedRefs",
            ("False", "RefNotPermitted"),
            ["HTTPRoute", "GRPCRoute"],
        ),
        (
            {"name": "x", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            "Accepted",
            ("True", "Accepted"),
            ["TLSRoute"],
        ),
        ({"name": "x", "port": 9000, "protocol": "TCP"}, "Accepted", ("True", "Accepted"), ["TCPRoute"]),
    ],
)
def test_listener_validation(
    listener: dict[str, Any], ctype: str, expected: tuple[str, str], kinds: list[str]
) -> None:
    t = _base(*_gw([listener]), o.secret(APP, "cert", PAIR))
    (lst,) = _status(t, "Gateway", "gw")["listeners"]
    assert _cond(lst["conditions"], ctype) == expected
    assert [k["kind"] for k in lst["supportedKinds"]] == kinds


def test_malformed_secret_is_invalid_certificate_ref() -> None:
    bad = o.secret(NS, "cert", PAIR)
    bad["data"]["tls.key"] = "bm90IGEga2V5"  # "not a key"
    listener = {"name": "x", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}}
    t = _base(*_gw([listener]), bad)
    (lst,) = _status(t, "Gateway", "gw")["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("False", "InvalidCertificateRef")


def test_cross_namespace_certificate_allowed_by_reference_grant() -> None:
    listener = {
        "name": "x",
        "port": 443,
        "protocol": "HTTPS",
        "tls": {"certificateRefs": [{"name": "cert", "namespace": APP}]},
    }
    t = _base(
        *_gw([listener]), o.secret(APP, "cert", PAIR), o.grant(APP, "g", "Gateway", NS, "Secret", "cert")
    )
    (lst,) = _status(t, "Gateway", "gw")["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")


def test_only_invalid_listeners_means_gateway_not_accepted() -> None:
    t = _base(*_gw([{"name": "x", "port": 80, "protocol": "INVALID"}]))
    assert _cond(_status(t, "Gateway", "gw")["conditions"], "Accepted") == ("False", "ListenersNotValid")
    t = _base(*_gw([HTTP, {"name": "x", "port": 81, "protocol": "INVALID"}]))
    assert _cond(_status(t, "Gateway", "gw")["conditions"], "Accepted") == ("True", "ListenersNotValid")


def test_conflicting_listeners() -> None:
    t = _base(*_gw([HTTP, {"name": "tcp", "port": 80, "protocol": "TCP"}]))
    ls = _status(t, "Gateway", "gw")["listeners"]
    assert all(_cond(x["conditions"], "Conflicted") == ("True", "ProtocolConflict") for x in ls)


RULE = [{"backendRefs": [{"name": "web", "port": 8080}]}]


@pytest.mark.parametrize(
    ("route", "listeners", "accepted"),
    [
        (o.httproute("r", NS, "gw", RULE), [HTTP], ("True", "Accepted")),
        (o.httproute("r", NS, "gw", RULE, sectionName="nope"), [HTTP], ("False", "NoMatchingParent")),
        (o.httproute("r", NS, "gw", RULE, port=8080), [HTTP], ("False", "NoMatchingParent")),
        (o.httproute("r", APP, "gw", RULE, namespace=NS), [HTTP], ("False", "NotAllowedByListeners")),
        (
            o.httproute("r", APP, "gw", RULE, namespace=NS),
            [{**HTTP, "allowedRoutes": {"namespaces": {"from": "All"}}}],
            ("True", "Accepted"),
        ),
        (
            o.httproute("r", APP, "gw", RULE, namespace=NS),
            [
                {
                    **HTTP,
                    "allowedRoutes": {
                        "namespaces": {"from": "Selector", "selector": {"matchLabels": {"role": "app"}}}
                    },
                }
            ],
            ("True", "Accepted"),
        ),
        (
            o.httproute("r", APP, "gw", RULE, namespace=NS),
            [
                {
                    **HTTP,
                    "allowedRoutes": {
                        "namespaces": {"from": "Selector", "selector": {"matchLabels": {"role": "other"}}}
                    },
                }
            ],
            ("False", "NotAllowedByListeners"),
        ),
        (
            o.httproute("r", NS, "gw", RULE, hostnames=["other.org"]),
            [{**HTTP, "hostname": "*.example.com"}],
            ("False", "NoMatchingListenerHostname"),
        ),
        (
            o.httproute("r", NS, "gw", RULE, hostnames=["a.example.com"]),
            [{**HTTP, "hostname": "*.example.com"}],
            ("True", "Accepted"),
        ),
        (
            o.httproute("r", NS, "gw", RULE),
            [{"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}],
            ("False", "NotAllowedByListeners"),
        ),
    ],
)
def test_route_accepted_reasons(
    route: dict[str, Any], listeners: list[dict[str, Any]], accepted: tuple[str, str]
) -> None:
    t = _base(*_gw(listeners), route)
    (parent,) = _status(t, "HTTPRoute", "r")["parents"]
    assert parent["controllerName"] == "nodemesh.io/gateway-controller"
    assert parent["parentRef"]["name"] == "gw" and parent["parentRef"]["namespace"] == NS
    assert _cond(parent["conditions"], "Accepted") == accepted
    attached = _status(t, "Gateway", "gw")["listeners"][0]["attachedRoutes"]
    assert attached == (1 if accepted[0] == "True" else 0)


@pytest.mark.parametrize(
    ("ref", "extra", "reason"),
    [
        ({"name": "nope", "port": 8080}, [], "BackendNotFound"),
        ({"name": "web", "port": 9999}, [], "BackendNotFound"),
        ({"group": "example.com", "kind": "Bucket", "name": "web"}, [], "InvalidKind"),
        (
            {"name": "web", "namespace": APP, "port": 8080},
            [o.service("web", APP, [("http", 8080, 3000)])],
            "RefNotPermitted",
        ),
    ],
)
def test_route_resolved_refs_reasons(ref: dict[str, Any], extra: list[dict[str, Any]], reason: str) -> None:
    t = _base(*_gw([HTTP]), *extra, o.httproute("r", NS, "gw", [{"backendRefs": [ref]}]))
    (parent,) = _status(t, "HTTPRoute", "r")["parents"]
    assert _cond(parent["conditions"], "ResolvedRefs") == ("False", reason)
    assert _cond(parent["conditions"], "Accepted") == ("True", "Accepted")


def test_cross_namespace_backend_with_reference_grant_resolves() -> None:
    t = _base(
        *_gw([HTTP]),
        o.service("web", APP, [("http", 8080, 3000)]),
        o.grant(APP, "g", "HTTPRoute", NS, "Service"),
        o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "web", "namespace": APP, "port": 8080}]}]),
    )
    (parent,) = _status(t, "HTTPRoute", "r")["parents"]
    assert _cond(parent["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")


def test_other_controllers_parent_status_is_kept() -> None:
    r = o.httproute("r", NS, "gw", RULE)
    other = {"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []}
    r["status"] = {"parents": [other]}
    t = _base(*_gw([HTTP]), r)
    parents = _status(t, "HTTPRoute", "r")["parents"]
    assert other in parents and len(parents) == 2


def test_transition_time_kept_when_status_unchanged() -> None:
    gw = o.gateway("gw", NS, [HTTP])
    gw["status"] = {
        "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    }
    t = _base(gw, o.lb_service(NS, "cilium-gateway-gw", "127.0.100.7"))
    (acc,) = [c for c in _status(t, "Gateway", "gw")["conditions"] if c["type"] == "Accepted"]
    assert acc["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_key_not_matching_the_certificate_is_invalid() -> None:
    other = self_signed(["x.org"])
    bad = o.secret(NS, "cert", (PAIR[0], other[1]))
    listener = {"name": "x", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}}
    t = _base(*_gw([listener]), bad)
    (lst,) = _status(t, "Gateway", "gw")["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("False", "InvalidCertificateRef")


def test_long_gateway_names_use_the_shortened_service_name() -> None:
    from services.operator.gateway import desired_gateway_services
    from services.xds.translate.ingest_gateway import gateway_service_name

    name = "g" * 60
    gw = {"metadata": {"name": name, "namespace": NS, "uid": "u"}, "spec": {"gatewayClassName": "c"}}
    cls = {"metadata": {"name": "c"}, "spec": {"controllerName": "io.cilium/gateway-controller"}}
    (svc,) = desired_gateway_services([gw], [cls])  # the operator's Service, the name xds looks for
    assert gateway_service_name(name) == svc["metadata"]["name"] != f"cilium-gateway-{name}"
    t = _base(o.gateway(name, NS, [HTTP]), o.lb_service(NS, gateway_service_name(name), "127.0.100.8"))
    assert _status(t, "Gateway", name)["addresses"] == [{"type": "IPAddress", "value": "127.0.100.8"}]
