"""A REAL Envoy serving a translated Gateway logs every request to the access log service.

Gateway + HTTPRoute objects go through the real translator (``access_log_cluster`` on, as the xds
app does), the ADS server serves them to Envoy 1.40 bootstrapped with ``als_port``; real HTTP goes
from a client address (127.0.77.5) through Envoy to an echo backend, to no route (404) and to a dead
backend (503). What a user sees: L7 flows on ``flows.<node>`` (and in stream FLOWS, what ``nodemesh
observe --last`` reads), the Prometheus text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, generate_latest

from conformance.envoy import Envoy
from meshctl.flowfilter import build_filters, matches
from meshctl.observe_stream import format_row
from nodemesh import codec, subjects
from nodemesh.bus import Bus
from nodemesh.messages.flow import Endpoint, Flow
from services.datapath.accesslog.convert import no_enrich
from services.datapath.accesslog.server import AccessLogServer, bus_publisher
from services.xds.bootstrap import ALS_CLUSTER, render_bootstrap
from services.xds.snapshot import Snapshot
from services.xds.translate import TranslateInput, translate
from testkit.natsserver import free_port
from testkit.promscrape import total
from tests.xds.envoy_fixtures import Backends, Xds, eventually, serves

pytestmark = pytest.mark.envoy

NS = "default"
GW_API = "gateway.networking.k8s.io/v1"
CLIENT_IP = "127.0.77.5"
DEAD_IP = "127.0.77.9"  # nothing listens there: Envoy answers 503


def objects(gw_ip: str, lport: int, echo_port: int, dead_port: int) -> dict[str, list[dict[str, Any]]]:
    def svc(name: str, port: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"ports": [{"port": 80, "targetPort": port, "name": "http"}]},
        }

    def eps(name: str, ip: str, port: int) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }

    def rule(prefix: str, backend: str) -> dict[str, Any]:
        return {
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "backendRefs": [{"name": backend, "port": 80}],
        }

    return {
        "Namespace": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}],
        "GatewayClass": [
            {
                "apiVersion": GW_API,
                "kind": "GatewayClass",
                "metadata": {"name": "nodemesh", "generation": 1},
                "spec": {"controllerName": "nodemesh.io/gateway-controller"},
            }
        ],
        "Gateway": [
            {
                "apiVersion": GW_API,
                "kind": "Gateway",
                "metadata": {"name": "gw", "namespace": NS, "generation": 1},
                "spec": {
                    "gatewayClassName": "nodemesh",
                    "listeners": [{"name": "http", "protocol": "HTTP", "port": lport}],
                },
            }
        ],
        "Service": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "cilium-gateway-gw", "namespace": NS},
                "spec": {"type": "LoadBalancer", "ports": [{"port": lport, "name": f"port-{lport}"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": gw_ip}]}},
            },
            svc("echo", echo_port),
            svc("dead", dead_port),
        ],
        "EndpointSlice": [eps("echo", "127.0.0.1", echo_port), eps("dead", DEAD_IP, dead_port)],
        "HTTPRoute": [
            {
                "apiVersion": GW_API,
                "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": NS, "generation": 1},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "rules": [rule("/api", "echo"), rule("/dead", "dead")],
                },
            }
        ],
    }


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def xds(bus: Bus) -> AsyncIterator[Xds]:
    x = Xds(bus)
    await x.start()
    try:
        yield x
    finally:
        await x.stop()


async def get(url: str) -> int:
    # From a client address of its own, so the source endpoint is visibly the client's.
    conn = aiohttp.TCPConnector(force_close=True, local_addr=(CLIENT_IP, 0))
    async with (
        aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(url) as r,
    ):
        await r.read()
        return r.status


async def serve_gateway(xds: Xds, backends: Backends) -> tuple[str, int]:
    """Translate the Gateway (access logs on, as the xds app does) and serve it; → (address, port)."""
    echo_port = await backends.add("echo")
    gw_ip, lport = f"127.0.100.{10 + free_port() % 200}", free_port()
    tr = translate(
        TranslateInput(objects=objects(gw_ip, lport, echo_port, free_port()), access_log_cluster=ALS_CLUSTER)
    )
    snap = Snapshot(tr.resources)
    snap.consistent()
    xds.cache.set_default(snap)
    return gw_ip, lport


async def test_envoy_requests_become_l7_flows_and_hubble_metrics(
    bus: Bus, xds: Xds, backends: Backends
) -> None:
    gw_ip, lport = await serve_gateway(xds, backends)

    pods = {
        CLIENT_IP: Endpoint(
            identity=4242, namespace="shop", pod_name="web-5d8f7c9b6-abcde", labels=["k8s:app=web"]
        ),
        "127.0.0.1": Endpoint(
            identity=4243, namespace=NS, pod_name="echo-7c9f8d6b5-xyz12", labels=["k8s:app=echo"]
        ),
        DEAD_IP: Endpoint(identity=4244, namespace=NS, pod_name="dead-0", labels=["k8s:app=dead"]),
        gw_ip: Endpoint(identity=8, labels=["reserved:ingress"]),
    }
    reg = CollectorRegistry()
    # No default direction: INGRESS below can only come from the listener's nodemesh.direction tag.
    als = AccessLogServer("node-1", bus_publisher(bus), reg, pods.get, direction="")
    await als.start(0)
    got: list[Flow] = []

    async def on_flow(f: Flow, _m: Msg) -> None:
        got.append(f)

    await bus.subscribe(subjects.flows("node-1"), Flow, on_flow)
    await bus.nc.flush()
    envoy = Envoy(
        render_bootstrap("node-1", "127.0.0.1", xds.port, 0, als_port=als.port), name="envoy@node-1"
    )
    envoy.start()
    try:
        await envoy.wait_live(60)
        base = f"http://{gw_ip}:{lport}"
        await serves(f"{base}/api/warmup", "echo")  # the route is in place (also logged, from 127.0.0.1)
        await eventually(lambda: _true(len(got) >= 2), 30, "the warm-up request's flows")
        got.clear()
        statuses = [await get(f"{base}/api/items?id={i}") for i in range(3)]
        statuses += [await get(f"{base}/nope"), await get(f"{base}/nope/again"), await get(f"{base}/dead/x")]
        assert statuses == [200, 200, 200, 404, 404, 503]

        await eventually(lambda: _true(len(got) >= 12), 30, "6 requests → 12 L7 flows on flows.node-1")
    finally:
        envoy.stop()
        await als.stop(0)

    requests = [f for f in got if f.l7 and f.l7.type == "REQUEST"]
    responses = [f for f in got if f.l7 and f.l7.type == "RESPONSE"]
    assert len(requests) == len(responses) == 6
    by_path: dict[str, list[Flow]] = {}
    for f in responses:
        assert f.l7 is not None and f.l7.http is not None
        by_path.setdefault(f.l7.http.url.split("?")[0].removeprefix(f"http://{gw_ip}:{lport}"), []).append(f)
    assert {p: [f.l7.http.code for f in fs if f.l7 and f.l7.http] for p, fs in by_path.items()} == {
        "/api/items": [200, 200, 200],
        "/nope": [404],
        "/nope/again": [404],
        "/dead/x": [503],
    }
    for f in responses:
        assert f.l7 is not None and f.l7.http is not None
        assert f.l7.http.method == "GET" and f.l7.http.protocol == "HTTP/1.1"
        assert int(f.l7.latency_ns) > 0
        assert f.Type == "L7" and f.traffic_direction == "INGRESS" and f.is_reply and f.node_name == "node-1"
        assert f.destination == pods[CLIENT_IP]  # a response goes back to the client
        assert f.verdict == "FORWARDED"
    ok = by_path["/api/items"][0]
    assert ok.source == pods["127.0.0.1"] and ok.ip is not None and ok.ip.source == "127.0.0.1"
    assert by_path["/dead/x"][0].source == pods[DEAD_IP]
    assert by_path["/nope"][0].source == pods[gw_ip]  # answered by the Gateway itself
    for f in requests:
        assert f.source == pods[CLIENT_IP] and f.l7 is not None and f.l7.http is not None
        assert f.l7.http.url.startswith(f"http://{gw_ip}:{lport}/")
        assert any(h["key"] == "X-Request-Id" and h["value"] for h in f.l7.http.headers)

    # `nodemesh observe --type l7` (same filter, same row format) and stream FLOWS (what --last reads).
    allow = build_filters(types=["l7"])
    assert all(matches(f, allow) for f in got)
    row = format_row(by_path["/dead/x"][0])
    assert row[1].startswith("default/dead-0:") and row[2].startswith("shop/web-5d8f7c9b6-abcde:")
    assert row[3].startswith("HTTP/1.1 503 ") and row[3].endswith(f"(GET http://{gw_ip}:{lport}/dead/x)")
    info = await bus.js.stream_info("FLOWS")
    last = await bus.js.get_msg("FLOWS", info.state.last_seq)
    assert codec.decode(last.data or b"", Flow).Type == "L7"

    # The Prometheus text a scrape of the datapath's /metrics returns.
    text = generate_latest(reg).decode()
    req = {"method": "GET", "protocol": "HTTP/1.1", "reporter": "server", "source": "shop/web"}
    req |= {"source_namespace": "shop", "source_workload": "web", "source_app": "web"}
    assert total(text, "hubble_http_requests_total", **req, destination="default/echo", status="200") == 3
    assert total(text, "hubble_http_requests_total", **req, destination="reserved:ingress", status="404") == 2
    assert total(text, "hubble_http_requests_total", **req, destination="default/dead", status="503") == 1
    # the dashboard's per-workload selection (labelsContext), the warm-up from 127.0.0.1 included
    to_echo = {"destination_workload": "echo", "destination_namespace": NS, "traffic_direction": "ingress"}
    assert total(text, "hubble_http_requests_total", **to_echo) == 4
    assert total(text, "hubble_http_responses_total", status="200") == 4  # + the warm-up from 127.0.0.1
    dur = {"method": "GET", "reporter": "server", "source": "shop/web", "destination": "default/echo"}
    assert total(text, "hubble_http_request_duration_seconds_count", **dur) == 3
    assert total(text, "hubble_http_request_duration_seconds_bucket", **dur, le="+Inf") == 3
    assert total(text, "hubble_http_request_duration_seconds_sum", **dur) > 0
    assert total(text, "nodemesh_accesslog_entries_dropped_total", reason="decode") == 0


async def test_envoy_logs_over_a_unix_socket_and_reconnects_to_a_restarted_receiver(
    bus: Bus, xds: Xds, backends: Backends, tmp_path: Path
) -> None:
    """Local mode's setup: the socket lives in the node's data dir; the datapath may restart."""
    gw_ip, lport = await serve_gateway(xds, backends)
    sock = str(tmp_path / "als.sock")
    got: list[Flow] = []

    async def on_flow(f: Flow, _m: Msg) -> None:
        got.append(f)

    await bus.subscribe(subjects.flows("node-1"), Flow, on_flow)
    await bus.nc.flush()
    als = AccessLogServer("node-1", bus_publisher(bus), CollectorRegistry(), no_enrich)
    await als.start(socket_path=sock)
    envoy = Envoy(render_bootstrap("node-1", "127.0.0.1", xds.port, 0, als_socket=sock), name="envoy@node-1")
    envoy.start()
    try:
        await envoy.wait_live(60)
        url = f"http://{gw_ip}:{lport}/api/one"
        await serves(url, "echo")
        await eventually(lambda: _true(any(_path(f) == "/api/one" for f in got)), 30, "flow via the socket")
        await als.stop(0)  # the datapath restarts: a new receiver on the same socket path
        als = AccessLogServer("node-1", bus_publisher(bus), CollectorRegistry(), no_enrich)
        await als.start(socket_path=sock)

        async def logged_again() -> bool:
            # Envoy notices the dead stream on its next flush and opens a new one; keep sending.
            assert await get(f"http://{gw_ip}:{lport}/api/two") == 200
            return any(_path(f) == "/api/two" for f in got)

        await eventually(logged_again, 60, "flows again after the receiver restarted")
    finally:
        envoy.stop()
        await als.stop(0)


def _path(f: Flow) -> str:
    return urlsplit(f.l7.http.url).path if f.l7 and f.l7.http else ""


async def _true(v: bool) -> bool:
    return v
