"""Hand-built Envoy resources for the ADS tests: an HTTP listener → route → EDS cluster → endpoints."""

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


def ads() -> ConfigSource:
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=2)  # V3


def pack(msg: Message) -> AnyPb:
    a = AnyPb()
    a.Pack(msg)
    return a


def listener(name: str, port: int, route: str, address: str = "127.0.0.1") -> Listener:
    hcm = HttpConnectionManager(
        stat_prefix=name,
        rds=Rds(route_config_name=route, config_source=ads()),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
    )
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address=address, port_value=port)),
        filter_chains=[
            FilterChain(
                filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))]
            )
        ],
    )


def route(name: str, clusters_by_prefix: dict[str, str], domain: str = "*") -> RouteConfiguration:
    routes = [
        Route(match=RouteMatch(prefix=prefix), route=RouteAction(cluster=cluster))
        for prefix, cluster in sorted(clusters_by_prefix.items(), key=lambda kv: -len(kv[0]))
    ]
    return RouteConfiguration(
        name=name, virtual_hosts=[VirtualHost(name=name, domains=[domain], routes=routes)]
    )


def cluster(name: str) -> Cluster:
    return Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=Duration(seconds=1),
    )


def endpoints(name: str, ports: list[int], host: str = "127.0.0.1") -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(socket_address=SocketAddress(address=host, port_value=p))
                        )
                    )
                    for p in ports
                ]
            )
        ],
    )


def simple_snapshot(
    listen_port: int,
    backend_ports: dict[str, list[int]],
    prefixes: dict[str, str] | None = None,
    address: str = "127.0.0.1",
) -> Snapshot:
    """One listener on ``address:listen_port`` routing ``prefixes`` (prefix → cluster) to EDS clusters."""
    prefixes = prefixes or {"/": next(iter(backend_ports))}
    msgs: list[Message] = [listener("web", listen_port, "web-routes", address), route("web-routes", prefixes)]
    for c, ports in backend_ports.items():
        msgs += [cluster(c), endpoints(c, ports)]
    return Snapshot.of(msgs)


def tls_listener(name: str, port: int, route_name: str, secret: str) -> Listener:
    """An HTTPS listener whose certificate comes over SDS (ADS) by name — no key inline."""
    from envoy.config.core.v3.base_pb2 import TransportSocket
    from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
    from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import CommonTlsContext, DownstreamTlsContext

    lst = listener(name, port, route_name)
    tls = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[SdsSecretConfig(name=secret, sds_config=ads())]
        )
    )
    lst.filter_chains[0].transport_socket.CopyFrom(
        TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls))
    )
    return lst


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes) -> Message:
    from envoy.config.core.v3.base_pb2 import DataSource
    from envoy.extensions.transport_sockets.tls.v3.common_pb2 import TlsCertificate
    from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

    return Secret(
        name=name,
        tls_certificate=TlsCertificate(
            certificate_chain=DataSource(inline_bytes=cert_pem), private_key=DataSource(inline_bytes=key_pem)
        ),
    )


def self_signed(host: str) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for ``host`` and its key (PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
