"""HTTP routing through a real Envoy to real echo backends, in the style of the upstream conformance suite.

One Envoy (fed the translation through xDS files) and echo pods run for the module; each test applies
its Gateway and routes, waits for the Gateway to be Accepted and Programmed, then sends real requests
that must meet their expectation 3 times in a row within 30 s (upstream's eventual-consistency rule).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from conformance import objects as o
from conformance.checks import status_check
from conformance.client import http_request
from conformance.runner import expect_eventually
from conformance.standalone import Standalone

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
pytestmark = [ROOT_ONLY, pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

NS, WEB = "gw-infra", "gw-web"
# The v1 pods' h2c port, as upstream's base Service infra-backend-v1 declares it.
H2C_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "v1-h2c", "namespace": NS},
    "spec": {
        "selector": {"app": "v1"},
        "ports": [{"name": "h2c", "port": 8081, "targetPort": 3001, "appProtocol": "kubernetes.io/h2c"}],
    },
}
CONTROLLER = "nodemesh.io/gateway-controller"


def backend(ns: str, name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "service": f"{ns}/{name}",
        "pods": {"namespace": ns, "deployment": name, "replicas": replicas, "server": "echo-http"},
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[Standalone]:
    async with Standalone() as c:
        await c.apply(
            [
                o.namespace(NS),
                o.namespace(WEB, {"team": "web"}),
                o.service("v1", NS, [("http", 8080, 3000)]),
                o.service("v2", NS, [("http", 8080, 3000)]),
                o.service("web", WEB, [("http", 8080, 3000)]),
                H2C_SERVICE,
            ]
        )
        await c.ensure_backends([backend(NS, "v1"), backend(NS, "v2"), backend(WEB, "web")], {})
        yield c


async def apply_and_wait(c: Standalone, objs: list[dict[str, Any]], gateway: str = "gw") -> None:
    await c.apply(objs)
    for chk in (
        {"check": "namespaces_ready", "namespaces": [NS]},
        {"check": "gateway_has_address", "gateway": f"{NS}/{gateway}"},
    ):
        assert status_check(c, chk, CONTROLLER) == ""


def gw(name: str = "gw", **listener: Any) -> dict[str, Any]:
    return o.gateway(name, NS, [{"name": "http", "port": 80, "protocol": "HTTP", **listener}])


def ref(name: str, ns: str | None = None, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "port": 8080, **kw}
    if ns:
        r["namespace"] = ns
    return r


T = {"gateway": f"{NS}/gw", "port": 80}


async def test_path_header_method_and_query_routing(cluster: Standalone) -> None:
    rules = [
        {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": [ref("v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [ref("v2")]},
        {"matches": [{"headers": [{"name": "version", "value": "two"}]}], "backendRefs": [ref("v2")]},
        {"matches": [{"method": "POST"}], "backendRefs": [ref("v2")]},
        {"matches": [{"queryParams": [{"name": "animal", "value": "whale"}]}], "backendRefs": [ref("v2")]},
        {"backendRefs": [ref("v1")]},
    ]
    r = o.httproute("routing", NS, "gw", rules)
    await apply_and_wait(cluster, [gw(), r])
    cases = [
        ({"path": "/exact"}, f"{NS}/v2"),
        ({"path": "/exact/"}, f"{NS}/v1"),
        ({"path": "/v2/sub"}, f"{NS}/v2"),
        ({"path": "/v2example"}, f"{NS}/v1"),
        ({"path": "/", "headers": {"Version": "two"}}, f"{NS}/v2"),
        ({"path": "/", "method": "POST"}, f"{NS}/v2"),
        ({"path": "/?animal=whale"}, f"{NS}/v2"),
        ({"path": "/?animal=dolphin"}, f"{NS}/v1"),
    ]
    for req, want in cases:
        seen = {"path": req["path"], "method": req.get("method", "GET")}
        await expect_eventually(
            cluster, T, req, {"status": 200, "backend": want, "request_seen_by_backend": seen}
        )
    await cluster.delete([r])


async def test_hostnames_select_routes(cluster: Standalone) -> None:
    a = o.httproute("host-a", NS, "gw", [{"backendRefs": [ref("v1")]}], hostnames=["a.example.com"])
    b = o.httproute("host-b", NS, "gw", [{"backendRefs": [ref("v2")]}], hostnames=["*.wild.example.com"])
    await apply_and_wait(cluster, [gw(hostname="*.example.com"), a, b])
    await expect_eventually(
        cluster, T, {"host": "a.example.com", "path": "/"}, {"status": 200, "backend": f"{NS}/v1"}
    )
    await expect_eventually(
        cluster,
        T,
        {"host": "x.wild.example.com:8080", "path": "/"},
        {
            "status": 200,
            "backend": f"{NS}/v2",
            "request_seen_by_backend": {"host": "x.wild.example.com:8080"},
        },
    )
    await expect_eventually(cluster, T, {"host": "b.example.com", "path": "/"}, {"status": 404})
    await expect_eventually(cluster, T, {"host": "other.org", "path": "/"}, {"status": 404})
    await cluster.delete([a, b, gw(hostname="*.example.com")])


async def test_request_and_response_header_modifiers(cluster: Standalone) -> None:
    filters = [
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {
                "set": [{"name": "X-Set", "value": "set"}],
                "add": [{"name": "X-Add", "value": "added"}],
                "remove": ["X-Remove"],
            },
        },
        {
            "type": "ResponseHeaderModifier",
            "responseHeaderModifier": {
                "set": [{"name": "X-Resp-Set", "value": "gw"}],
                "remove": ["X-Resp-Remove"],
            },
        },
    ]
    r = o.httproute("headers", NS, "gw", [{"filters": filters, "backendRefs": [ref("v1")]}])
    await apply_and_wait(cluster, [gw(), r])
    await expect_eventually(
        cluster,
        T,
        {
            "path": "/",
            "headers": {"X-Set": "client", "X-Add": "client", "X-Remove": "gone"},
            "echo_set_response_headers": {"X-Resp-Set": "backend", "X-Resp-Remove": "x"},
        },
        {
            "status": 200,
            "backend": f"{NS}/v1",
            "request_seen_by_backend": {
                "headers": {"X-Set": "set", "X-Add": "client,added"},
                "absent_headers": ["X-Remove"],
            },
            "response_headers": {"X-Resp-Set": "gw"},
            "response_absent_headers": ["X-Resp-Remove"],
        },
    )
    await cluster.delete([r])


async def test_redirects_and_rewrites(cluster: Standalone) -> None:
    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "scheme": "https",
                        "hostname": "new.example.org",
                        "statusCode": 301,
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                    },
                }
            ],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/port"}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": {"port": 8083, "statusCode": 308}}],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/prefix/one"}}],
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "hostname": "rewritten.example.org",
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"},
                    },
                }
            ],
            "backendRefs": [ref("v1")],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/full"}}],
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/replaced"}},
                }
            ],
            "backendRefs": [ref("v1")],
        },
    ]
    r = o.httproute("redirects", NS, "gw", rules)
    await apply_and_wait(cluster, [gw(), r])
    no_follow = {"follow_redirects": False}
    await expect_eventually(
        cluster,
        T,
        {"path": "/moved/x", **no_follow},
        {
            "status": 301,
            "redirect_location": {
                "scheme": "https",
                "host": "new.example.org",
                "port": None,
                "path": "/new/x",
            },
        },
    )
    await expect_eventually(
        cluster,
        T,
        {"path": "/port", "host": "h.example.org", **no_follow},
        {
            "status": 308,
            "redirect_location": {"scheme": "http", "host": "h.example.org", "port": "8083", "path": "/port"},
        },
    )
    await expect_eventually(
        cluster,
        T,
        {"path": "/prefix/one/two?q=1"},
        {
            "status": 200,
            "backend": f"{NS}/v1",
            "request_seen_by_backend": {"path": "/one/two?q=1", "host": "rewritten.example.org"},
        },
    )
    await expect_eventually(
        cluster,
        T,
        {"path": "/full/anything"},
        {"status": 200, "request_seen_by_backend": {"path": "/replaced"}},
    )
    await cluster.delete([r])


async def test_unresolvable_backends_answer_500_with_conditions(cluster: Standalone) -> None:
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}], "backendRefs": [ref("nope")]},
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/kind"}}],
            "backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "v1"}],
        },
        {"backendRefs": [ref("v1")]},
    ]
    r = o.httproute("broken", NS, "gw", rules)
    await apply_and_wait(cluster, [gw(), r])
    await expect_eventually(cluster, T, {"path": "/missing"}, {"status": 500})
    await expect_eventually(cluster, T, {"path": "/kind"}, {"status": 500})
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{NS}/v1"})
    chk = {
        "check": "route_condition",
        "kind": "HTTPRoute",
        "route": f"{NS}/broken",
        "gateway": f"{NS}/gw",
        "condition": {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"},
    }
    assert status_check(cluster, chk, CONTROLLER) == ""
    await cluster.delete([r])


async def test_cross_namespace_backend_needs_a_reference_grant(cluster: Standalone) -> None:
    r = o.httproute("cross", NS, "gw", [{"backendRefs": [ref("web", WEB)]}])
    await apply_and_wait(cluster, [gw(), r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 500})
    chk = {
        "check": "route_condition",
        "kind": "HTTPRoute",
        "route": f"{NS}/cross",
        "gateway": f"{NS}/gw",
        "condition": {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted"},
    }
    assert status_check(cluster, chk, CONTROLLER) == ""
    grant = o.grant(WEB, "allow-infra", "HTTPRoute", NS, "Service", "web")
    await cluster.apply([grant])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{WEB}/web"})
    await cluster.delete([grant])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 500})
    await cluster.delete([r])


async def test_route_from_another_namespace_attaches_through_a_selector(cluster: Standalone) -> None:
    listener = {
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "web"}}}}
    }
    r = o.httproute("from-web", WEB, "gw", [{"backendRefs": [ref("web")]}], namespace=NS)
    await apply_and_wait(cluster, [gw(**listener), r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{WEB}/web"})
    accepted = {
        "check": "route_parent_accepted",
        "kind": "HTTPRoute",
        "route": f"{WEB}/from-web",
        "gateway": f"{NS}/gw",
    }
    assert status_check(cluster, accepted, CONTROLLER) == ""
    await cluster.delete([r, gw(**listener)])


async def test_h2c_backend_protocol(cluster: Standalone) -> None:
    r = o.httproute("h2c", NS, "gw", [{"backendRefs": [{"name": "v1-h2c", "port": 8081}]}])
    await apply_and_wait(cluster, [gw(), r])
    await expect_eventually(cluster, T, {"path": "/h2c"}, {"status": 200, "backend": f"{NS}/v1"})
    body = http_request(cluster.gateway_address(NS, "gw"), 80, {"path": "/h2c"}).json() or {}
    assert body["proto"] == "HTTP/2.0"  # Envoy spoke h2c to the backend's h2c port
    await cluster.delete([r])
