"""Resource sets for the xds benchmark: a big gateway config and the per-node vs sidecar layouts."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ConfigSource
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route, RouteAction, RouteMatch, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from services.xds.snapshot import Snapshot

GROUPS = 10  # gateway listeners, one RouteConfiguration each
ROUTES_PER_GROUP = 100  # 1,000 routes (one HTTPRoute hostname each) → 1,000 backend clusters
ENDPOINTS_PER_CLUSTER = 10  # 10,000 endpoints


def _ads() -> ConfigSource:
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=2)


def _pack(m: Message) -> AnyPb:
    a = AnyPb()
    a.Pack(m)
    return a


def listener(name: str, port: int, route: str) -> Listener:
    hcm = HttpConnectionManager(
        stat_prefix=name,
        rds=Rds(route_config_name=route, config_source=_ads()),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=_pack(Router()))],
    )
    f = Filter(name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm))
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[FilterChain(filters=[f])],
    )


def cluster(name: str) -> Cluster:
    return Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=Duration(seconds=1),
    )


def assignment(name: str, addrs: list[tuple[str, int]]) -> ClusterLoadAssignment:
    eps = [
        LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(address=h, port_value=p))))
        for h, p in addrs
    ]
    return ClusterLoadAssignment(cluster_name=name, endpoints=[LocalityLbEndpoints(lb_endpoints=eps)])


def fake_endpoints(i: int, salt: int = 0) -> list[tuple[str, int]]:
    """Loopback addresses nobody connects to (no traffic and no health checks in the latency part)."""
    return [
        (f"127.1.{(i // 250) % 250}.{i % 250 + 1}", 10000 + k + salt) for k in range(ENDPOINTS_PER_CLUSTER)
    ]


def route_config(group: int, backends: dict[int, str]) -> RouteConfiguration:
    vhosts = [
        VirtualHost(
            name=f"host-{i}",
            domains=[f"host-{i}.example.com"],
            routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=backends[i]))],
        )
        for i in range(group * ROUTES_PER_GROUP, (group + 1) * ROUTES_PER_GROUP)
    ]
    return RouteConfiguration(name=f"routes-{group}", virtual_hosts=vhosts)


def big_snapshot(ports: list[int]) -> tuple[Snapshot, dict[int, str]]:
    """1,000 routes over 10 listeners, 1,000 EDS clusters, 10,000 endpoints."""
    backends = {i: f"svc-{i}" for i in range(GROUPS * ROUTES_PER_GROUP)}
    msgs: list[Message] = []
    for g in range(GROUPS):
        msgs += [listener(f"gw-{g}", ports[g], f"routes-{g}"), route_config(g, backends)]
    for i, name in backends.items():
        msgs += [cluster(name), assignment(name, fake_endpoints(i))]
    return Snapshot.of(msgs), backends


def per_node_snapshot(port: int, backend: int, n: int) -> Snapshot:
    """One node Envoy: /svc-i → cluster svc-i → the backend, for n services."""
    routes = [
        Route(match=RouteMatch(prefix=f"/svc-{i}"), route=RouteAction(cluster=f"svc-{i}")) for i in range(n)
    ]
    msgs: list[Message] = [
        listener("node", port, "node-routes"),
        RouteConfiguration(
            name="node-routes", virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=routes)]
        ),
    ]
    for i in range(n):
        msgs += [cluster(f"svc-{i}"), assignment(f"svc-{i}", [("127.0.0.1", backend)])]
    return Snapshot.of(msgs)


def sidecar_snapshot(i: int, outbound: int, inbound: list[int], backend: int) -> Snapshot:
    """Sidecar i: an outbound listener with the same n routes (→ peer sidecars' inbound ports) and an
    inbound listener → the local backend, as a sidecar mesh without per-workload scoping does."""
    n = len(inbound)
    routes = [
        Route(match=RouteMatch(prefix=f"/svc-{j}"), route=RouteAction(cluster=f"svc-{j}")) for j in range(n)
    ]
    inbound_routes = [Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="local"))]
    msgs: list[Message] = [
        listener("outbound", outbound, "outbound-routes"),
        listener("inbound", inbound[i], "inbound-routes"),
        RouteConfiguration(
            name="outbound-routes", virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=routes)]
        ),
        RouteConfiguration(
            name="inbound-routes",
            virtual_hosts=[VirtualHost(name="local", domains=["*"], routes=inbound_routes)],
        ),
        cluster("local"),
        assignment("local", [("127.0.0.1", backend)]),
    ]
    for j in range(n):
        msgs += [cluster(f"svc-{j}"), assignment(f"svc-{j}", [("127.0.0.1", inbound[j])])]
    return Snapshot.of(msgs)
