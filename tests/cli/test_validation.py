"""validate_object / object_problems: what the CLI and the API server reject, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from validation import object_problems, object_warnings, validate_object


def route(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": spec,
    }


def cnp(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        (
            route(rules=[{"backendRefs": [{"name": "s", "port": 0}]}]),
            "spec.rules[0].backendRefs[0].port",
            "minimum",
        ),
        (route(rules=[{"backendRefs": [{"port": 80}]}]), "spec.rules[0].backendRefs[0].name", "required"),
        (route(hostnames=["a_b"]), "spec.hostnames[0]", "does not match"),
        (
            route(rules=[{"timeouts": {"request": "10 seconds"}}]),
            "spec.rules[0].timeouts.request",
            "does not match",
        ),
        (
            route(rules=[{"matches": [{"method": "FETCH"}]}]),
            "spec.rules[0].matches[0].method",
            "is not one of",
        ),
        (
            cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["everyone"]}]}),
            "spec.ingress[0].fromEntities[0]",
            "",
        ),
        (
            cnp({"endpointSelector": {}, "egress": [{"toCIDR": ["300.0.0.0/8"]}]}),
            "spec.egress[0].toCIDR[0]",
            "",
        ),
        (cnp({"ingress": []}), "spec", "endpointSelector"),
        (
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumEnvoyConfig",
                "metadata": {"name": "c"},
                "spec": {"services": [{"listener": "l"}]},
            },
            "spec.services[0].name",
            "required",
        ),
        (
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "g"},
                "spec": {"gatewayClassName": "c", "listeners": []},
            },
            "spec.listeners",
            "non-empty",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "s"},
                "spec": {"ports": [{"port": "http"}]},
            },
            "spec.ports[0].port",
            "not a valid port",
        ),
        (
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "c"}},
                        "spec": {"containers": [{"name": "c", "image": "i"}]},
                    },
                },
            },
            "spec.template.metadata.labels",
            "does not match spec.selector",
        ),
    ],
    ids=[
        "route-port",
        "route-backend-name",
        "route-hostname",
        "route-timeout",
        "route-method",
        "cnp-entity",
        "cnp-cidr",
        "cnp-oneof",
        "cec-service-name",
        "gateway-listeners",
        "service-port",
        "deployment-selector",
    ],
)
def test_problems_name_the_field(obj: dict[str, Any], field: str, reason: str) -> None:
    problems = object_problems(obj)
    assert any(f == field and reason in r for f, r in problems), problems


@pytest.mark.parametrize(
    "obj",
    [
        route(
            parentRefs=[{"name": "gw"}],
            rules=[
                {
                    "matches": [{"path": {"type": "Exact", "value": "/"}}],
                    "backendRefs": [{"name": "s", "port": 80}],
                }
            ],
        ),
        cnp(
            {
                "endpointSelector": {"matchLabels": {"app": "x"}},
                "ingress": [
                    {
                        "fromEndpoints": [{}],
                        "toPorts": [
                            {
                                "ports": [{"port": "80", "protocol": "TCP"}],
                                "rules": {"http": [{"method": "GET"}]},
                            }
                        ],
                    }
                ],
                "egressDeny": [{"toEntities": ["world"]}],
            }
        ),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "c", "image": "nodemesh/echo"}]},
        },
    ],
    ids=["route", "cnp", "namespace", "pod"],
)
def test_valid_objects_pass(obj: dict[str, Any]) -> None:
    assert validate_object(obj) == []


def test_unknown_fields_are_warnings_unless_strict() -> None:
    obj = route(parentRef=[{"name": "gw"}])
    assert validate_object(obj) == []
    assert object_warnings(obj) == [("spec.parentRef", "unknown field")]
    assert ("spec.parentRef", "unknown field") in object_problems(obj, strict=True)


def test_status_is_not_validated() -> None:
    obj = route()
    obj["status"] = {"parents": "not a list"}
    assert validate_object(obj) == []


def test_garbage_never_raises() -> None:
    for junk in (
        {},
        {"kind": 3},
        {"kind": "HTTPRoute", "spec": "x"},
        {"kind": "Pod", "spec": {"containers": 5}},
    ):
        assert validate_object(junk)  # a list of problems, no exception


@pytest.mark.parametrize("algo", ["round_robin", "least_request", "random", "fastest"])
def test_lb_l7_algorithm_is_one_envoy_knows(algo: str) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "s",
            "annotations": {"service.cilium.io/lb-l7": "enabled", "service.cilium.io/lb-l7-algorithm": algo},
        },
        "spec": {"ports": [{"port": 80}]},
    }
    problems = object_problems(svc)
    if algo == "fastest":
        why = "service.cilium.io/lb-l7-algorithm 'fastest' is not one of round_robin, least_request, random"
        assert problems == [("metadata.annotations.service.cilium.io/lb-l7-algorithm", why)]
    else:
        assert problems == []


def _gateway(**spec: Any) -> dict[str, Any]:
    listeners = [
        {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}}
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "d"},
        "spec": {"gatewayClassName": "nodemesh", "listeners": listeners, **spec},
    }


def test_gateway_address_without_value_and_spec_tls_are_valid_even_strictly() -> None:
    """GatewayAddressEmpty and spec.tls (later upstream releases) are part of the vendored schema."""
    ca = {"group": "", "kind": "ConfigMap", "name": "ca"}
    gw = _gateway(
        addresses=[{"type": "IPAddress"}],
        tls={
            "frontend": {
                "default": {"validation": {"caCertificateRefs": [ca], "mode": "AllowInsecureFallback"}}
            }
        },
    )
    assert object_problems(gw, strict=True) == []
    bad = _gateway(
        tls={"frontend": {"default": {"validation": {"caCertificateRefs": [ca], "mode": "Maybe"}}}}
    )
    assert validate_object(bad)
