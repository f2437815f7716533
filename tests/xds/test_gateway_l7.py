"""CiliumEnvoyConfig and L7 load-balanced Services served by a real Envoy to real echo pods."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from conformance import objects as o
from conformance.client import http_request
from conformance.standalone import Standalone
from testkit.natsserver import free_port

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
pytestmark = [ROOT_ONLY, pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

NS = "l7"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[Standalone]:
    async with Standalone() as c:
        await c.apply([o.namespace(NS), o.service("web", NS, [("http", 8080, 3000)])])
        await c.ensure_backends(
            [{"service": f"{NS}/web", "pods": {"namespace": NS, "deployment": "web", "replicas": 2}}], {}
        )
        yield c


async def _poll_ok(addr: str, port: int, path: str = "/") -> dict[str, object]:
    import asyncio

    for _ in range(200):
        resp = await asyncio.to_thread(http_request, addr, port, {"path": path})
        if resp.status == 200 and resp.json():
            return resp.json() or {}
        await asyncio.sleep(0.1)
    raise AssertionError(f"no 200 from {addr}:{port}{path}: {resp.status} {resp.error}")


async def test_cec_listener_routes_to_backend_service(cluster: Standalone) -> None:
    port = free_port()
    cec = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "raw", "namespace": NS},
        "spec": {
            "backendServices": [{"name": "web", "namespace": NS}],
            "resources": [
                {
                    "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "name": "raw-listener",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
                    "filterChains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typedConfig": {
                                        "@type": HCM,
                                        "statPrefix": "raw",
                                        "rds": {"routeConfigName": "raw-route"},
                                        "httpFilters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typedConfig": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "name": "raw-route",
                    "virtualHosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                {
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": "web"},
                                    "requestHeadersToAdd": [
                                        {"header": {"key": "x-from-cec", "value": "yes"}}
                                    ],
                                }
                            ],
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "web",
                    "type": "EDS",
                    "connectTimeout": "2s",
                    "edsClusterConfig": {"serviceName": f"{NS}/web:8080"},
                },
            ],
        },
    }
    await cluster.apply([cec])
    assert cluster.last is not None and cluster.last.errors == []
    body = await _poll_ok("127.0.0.1", port)
    assert body["namespace"] == NS and str(body["pod"]).startswith("web-")
    assert body["headers"]["X-From-Cec"] == ["yes"]  # type: ignore[index]
    await cluster.delete([cec])


async def test_lb_l7_service_balances_over_pods(cluster: Standalone) -> None:
    ip, port = f"{cluster.gw_net}.201", free_port()
    svc = o.service("web-l7", NS, [("http", port, 3000)], annotations={"service.cilium.io/lb-l7": "enabled"})
    svc["spec"]["selector"] = {"app": "web"}
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    slice_ = o.endpoint_slice("web-l7", NS, [("http", 3000)], [p.ip for p in cluster.pods[f"{NS}/web"]])
    await cluster.apply([svc, slice_])
    await _poll_ok(ip, port)
    pods: Counter[str] = Counter()
    for _ in range(40):
        body = (http_request(ip, port, {"path": "/"}).json()) or {}
        pods[str(body.get("pod"))] += 1
    assert len(pods) == 2, pods  # round robin across both pods, at L7
    await cluster.delete([svc, slice_])
