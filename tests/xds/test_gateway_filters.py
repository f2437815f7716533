"""HTTPRoute retries, the CORS filter, backendRef-level filters and sessionPersistence, through a real
Envoy to real echo backends: what a client of the Gateway sees."""

from __future__ import annotations

import asyncio
import os
import uuid
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
NS = "gwf-infra"
CONTROLLER = "nodemesh.io/gateway-controller"
TARGET = {"gateway": f"{NS}/gw", "port": 80}


def _route(name: str, prefix: str, **rule: Any) -> dict[str, Any]:
    return o.httproute(
        name,
        NS,
        "gw",
        [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backendRefs": [{"name": "v1", "port": 8080}],
                **rule,
            }
        ],
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[Standalone]:
    async with Standalone() as c:
        ws_service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "v1-ws", "namespace": NS},
            "spec": {
                "selector": {"app": "v1"},
                "ports": [
                    {"name": "ws", "port": 8090, "targetPort": 3000, "appProtocol": "kubernetes.io/ws"}
                ],
            },
        }
        await c.apply([o.namespace(NS), o.service("v1", NS, [("http", 8080, 3000)]), ws_service])
        await c.ensure_backends(
            [
                {
                    "service": f"{NS}/v1",
                    "pods": {"namespace": NS, "deployment": "v1", "replicas": 1, "server": "echo-http"},
                }
            ],
            {},
        )
        await c.apply(
            [
                o.gateway("gw", NS, [{"name": "http", "port": 80, "protocol": "HTTP"}]),
                _route("retry", "/status", retry={"codes": [503], "attempts": 2, "backoff": "10ms"}),
                # the same backend answer without a retry stanza: /plain/503 → /status/503
                _route(
                    "plain",
                    "/plain",
                    filters=[
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {
                                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/status"}
                            },
                        }
                    ],
                ),
                _route(
                    "cors",
                    "/cors",
                    filters=[
                        {
                            "type": "CORS",
                            "cors": {
                                "allowOrigins": ["https://*.example.com", "http://exact.test"],
                                "allowMethods": ["GET", "POST"],
                                "allowHeaders": ["x-a"],
                                "exposeHeaders": ["x-b"],
                                "maxAge": 60,
                                "allowCredentials": True,
                            },
                        }
                    ],
                ),
                o.httproute(
                    "ws",
                    NS,
                    "gw",
                    [
                        {
                            "matches": [{"path": {"type": "Exact", "value": "/ws"}}],
                            "backendRefs": [{"name": "v1-ws", "port": 8090}],
                        }
                    ],
                ),
                o.httproute(
                    "perbackend",
                    NS,
                    "gw",
                    [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/ext"}}],
                            "backendRefs": [
                                {
                                    "name": "v1",
                                    "port": 8080,
                                    "filters": [
                                        {
                                            "type": "ExtensionRef",
                                            "extensionRef": {"group": "x.io", "kind": "K", "name": "k"},
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                ),
            ]
        )
        assert status_check(c, {"check": "gateway_has_address", "gateway": f"{NS}/gw"}, CONTROLLER) == ""
        yield c


pytestmark = [ROOT_ONLY, pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]


def _reached(c: Standalone, backend_path: str) -> int:
    return c.pod_log(NS, "v1").count(f"Answering 503 to request made to {backend_path}\n")


async def test_a_retry_stanza_retries_the_listed_codes(cluster: Standalone) -> None:
    addr = cluster.gateway_address(NS, "gw")
    tag = uuid.uuid4().hex
    # one request, answered 503 by the backend every time: 1 attempt + 2 retries reach it
    path = f"/status/503?r={tag}"
    r = await asyncio.to_thread(http_request, addr, 80, {"path": path})
    assert r.status == 503
    await asyncio.sleep(0.5)
    assert _reached(cluster, path) == 3
    # the same backend answer through a route without a retry stanza: reached once
    r = await asyncio.to_thread(http_request, addr, 80, {"path": f"/plain/503?p={tag}"})
    assert r.status == 503
    await asyncio.sleep(0.5)
    assert _reached(cluster, f"/status/503?p={tag}") == 1


async def test_cors_answers_preflights_for_allowed_origins_only(cluster: Standalone) -> None:
    addr = cluster.gateway_address(NS, "gw")

    def preflight(origin: str) -> Any:
        return http_request(
            addr,
            80,
            {
                "method": "OPTIONS",
                "path": "/cors",
                "headers": {"Origin": origin, "Access-Control-Request-Method": "POST"},
            },
        )

    async def allowed() -> Any:
        for _ in range(100):
            r = await asyncio.to_thread(preflight, "https://a.example.com")
            if r.header("Access-Control-Allow-Origin"):
                return r
            await asyncio.sleep(0.1)
        raise AssertionError(f"no CORS answer: {r.status} {r.headers}")

    r = await allowed()
    assert r.header("Access-Control-Allow-Origin") == ["https://a.example.com"]
    assert r.header("Access-Control-Allow-Methods") == ["GET,POST"]
    assert r.header("Access-Control-Allow-Headers") == ["x-a"]
    assert r.header("Access-Control-Max-Age") == ["60"]
    assert r.header("Access-Control-Allow-Credentials") == ["true"]
    for origin in ("https://evil.test", "https://a.example.com.evil.test", "http://exact.test.evil"):
        bad = await asyncio.to_thread(preflight, origin)
        assert not bad.header("Access-Control-Allow-Origin"), origin
    simple = await asyncio.to_thread(
        http_request, addr, 80, {"path": "/cors", "headers": {"Origin": "http://exact.test"}}
    )
    assert simple.status == 200
    assert simple.header("Access-Control-Allow-Origin") == ["http://exact.test"]
    assert simple.header("Access-Control-Expose-Headers") == ["x-b"]


async def test_a_backend_filter_nodemesh_cannot_apply_gets_500_never_skipped(cluster: Standalone) -> None:
    await expect_eventually(cluster, TARGET, {"path": "/ext"}, {"status": 500})


async def test_websocket_upgrade_to_a_ws_backend(cluster: Standalone) -> None:
    """HTTPRouteBackendProtocolWebSocket: the upgrade passes the Gateway and messages echo both ways."""
    import aiohttp

    addr = cluster.gateway_address(NS, "gw")
    await expect_eventually(cluster, TARGET, {"path": "/ws"}, {"status": [200, 400, 405]})
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://{addr}/ws", timeout=10) as ws:
        for msg in ("hello", "through the gateway"):
            await ws.send_str(msg)
            got = await ws.receive(timeout=10)
            assert got.type == aiohttp.WSMsgType.TEXT and got.data == msg
    assert "Echoing back websocket made to /ws" in cluster.pod_log(NS, "v1")
