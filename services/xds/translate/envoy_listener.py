"""Model listeners → Envoy Listeners (+ their RouteConfigurations), research §5.3.

One Listener per address:port, bound with ``reuse_port`` so every node's Envoy can share it. Filter
chains: plain HTTP (``raw_buffer``), one per TLS-terminating Gateway listener (SNI, SDS certificate),
one per passthrough SNI set (``tcp_proxy``), or a single TCP chain. ``tls_inspector`` is added
whenever a chain matches on TLS. HTTP connection managers fetch routes by RDS over ADS.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from nodemesh import lbl7

from .envoy_cluster import BLACKHOLE, blackhole_cluster
from .envoy_common import ads, pack
from .envoy_route import route_configuration
from .model import Backend, ListenerModel
from .types import CLUSTER, LISTENER, ROUTE, Translation

__all__ = ["listener_resources"]


def _access_log(cluster: str, service: str = "") -> accesslog_pb2.AccessLog:
    """Every request, over gRPC to the node's access log service (L7 flows, docs/l7-visibility.md).
    ``service`` ("<ns>/<name>", lb-l7 listeners) becomes the flows' destination_service."""
    tags = [
        custom_tag_pb2.CustomTag(
            tag="nodemesh.direction", literal=custom_tag_pb2.CustomTag.Literal(value="INGRESS")
        )
    ]
    if service:
        lit = custom_tag_pb2.CustomTag.Literal(value=service)
        tags.append(custom_tag_pb2.CustomTag(tag=lbl7.SERVICE_TAG, literal=lit))
    cfg = als_pb2.HttpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name="nodemesh",
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)
            ),
            # Flows are for humans watching: flush within 250 ms instead of Envoy's 1 s.
            buffer_flush_interval=duration_pb2.Duration(nanos=250_000_000),
            # Gateway/Ingress/lb-l7 traffic enters the mesh: the flow's traffic_direction.
            custom_tags=tags,
        ),
        additional_request_headers_to_log=["traceparent"],
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=pack(cfg))


def _hcm(
    stat_prefix: str, route_name: str, access_log_cluster: str = "", service: str = ""
) -> listener_components_pb2.Filter:
    m = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        rds=hcm.Rds(route_config_name=route_name, config_source=ads()),
        http_filters=[
            # No-op unless a route carries a CORS policy (the HTTPRoute CORS filter).
            hcm.HttpFilter(name="envoy.filters.http.cors", typed_config=pack(cors_pb2.Cors())),
            hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
        ],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        # Keep the query and path exactly as sent: backends echo the raw request-URI.
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
    )
    if access_log_cluster:
        m.access_log.append(_access_log(access_log_cluster, service))
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(m)
    )


def _tcp_proxy(stat_prefix: str, backends: list[Backend]) -> listener_components_pb2.Filter:
    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(backends) == 1:
        tp.cluster = backends[0].cluster
    else:
        for b in backends:
            tp.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=b.cluster, weight=b.weight)
            )
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(tp))


def _client_validation(ctx: tls_pb2.DownstreamTlsContext, ca_pem: str, mode: str) -> None:
    """Gateway spec.tls.frontend: verify client certificates against the ConfigMaps' CAs.

    AllowValidOnly requires a certificate that verifies (the handshake fails otherwise);
    AllowInsecureFallback asks for one but lets the connection through without it or when it does not
    verify. The CA bundle is public, so it is inline rather than an SDS secret.
    """
    vc = ctx.common_tls_context.validation_context
    vc.trusted_ca.inline_bytes = ca_pem.encode()
    if mode == "AllowInsecureFallback":
        vc.trust_chain_verification = common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
        ctx.require_client_certificate.value = False
    else:
        ctx.require_client_certificate.value = True


def _blackhole(name: str) -> listener_components_pb2.Filter:
    """Accept, then close: a bound port with nothing to route to yet."""
    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=f"{name}/empty", cluster=BLACKHOLE)
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(tp))


def _misdirected(host: str) -> rc.VirtualHost:
    """A vhost answering 421: the SNI chose one HTTPS listener, the Host names another (spec)."""
    vh = rc.VirtualHost(name=f"misdirected:{host}", domains=[host])
    r = rc.Route(match=rc.RouteMatch(prefix="/"))
    r.direct_response.status = 421
    vh.routes.append(r)
    return vh


def listener_resources(lm: ListenerModel, out: Translation, access_log_cluster: str = "") -> None:
    """``access_log_cluster`` ("" = none): every HTTP connection manager logs to it (gRPC ALS)."""
    lst = listener_pb2.Listener(
        name=lm.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=lm.address, port_value=lm.port)
        ),
        enable_reuse_port=wrappers_pb2.BoolValue(value=True),
    )
    if lm.freebind:
        lst.freebind.value = True
    needs_tls = bool(lm.tls or lm.passthrough)
    if lm.http is not None:
        hcm_filter = _hcm(lm.http.name, lm.http.name, access_log_cluster, lm.service)
        chain = listener_components_pb2.FilterChain(name="http", filters=[hcm_filter])
        if needs_tls:
            chain.filter_chain_match.transport_protocol = "raw_buffer"
        lst.filter_chains.append(chain)
        out.resources[ROUTE][lm.http.name] = route_configuration(lm.http, "http")
    secure_hosts = [h for c in lm.tls for h in c.routes.vhosts if h != "*"]
    for c in lm.tls:
        ctx = tls_pb2.DownstreamTlsContext()
        ctx.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
        for s in c.secrets:
            ctx.common_tls_context.tls_certificate_sds_secret_configs.append(
                secret_pb2.SdsSecretConfig(name=s, sds_config=ads())
            )
        if c.client_validation is not None:
            _client_validation(ctx, c.client_validation.ca_pem, c.client_validation.mode)
        if c.tcp is not None:
            # TLS listener, Terminate mode: the decrypted bytes go to the TLSRoute's backends.
            if c.tcp:
                f = _tcp_proxy(f"{lm.name}/terminate", c.tcp)
            else:
                f = _blackhole(lm.name)
                out.resources[CLUSTER][BLACKHOLE] = blackhole_cluster()
            chain = listener_components_pb2.FilterChain(name=f"tls-terminate:{c.routes.name}", filters=[f])
        else:
            chain = listener_components_pb2.FilterChain(
                name=f"tls:{c.routes.name}", filters=[_hcm(c.routes.name, c.routes.name, access_log_cluster)]
            )
        chain.filter_chain_match.transport_protocol = "tls"
        chain.filter_chain_match.server_names.extend(sorted(set(c.server_names)))
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.Pack(ctx)
        lst.filter_chains.append(chain)
        if c.tcp is not None:
            continue
        own = set(c.routes.vhosts)
        extra = [_misdirected(h) for h in secure_hosts if h not in own]
        if "*" not in own and len(lm.tls) > 1:
            extra.append(_misdirected("*"))
        out.resources[ROUTE][c.routes.name] = route_configuration(c.routes, "https", extra)
    for p in lm.passthrough:
        chain = listener_components_pb2.FilterChain(
            name=f"passthrough:{p.name}:{','.join(p.server_names) or '*'}",
            filters=[_tcp_proxy(f"{lm.name}/passthrough", p.backends)],
        )
        chain.filter_chain_match.transport_protocol = "tls"
        chain.filter_chain_match.server_names.extend(p.server_names)
        lst.filter_chains.append(chain)
    if lm.tcp is not None:
        chain = listener_components_pb2.FilterChain(
            name="tcp", filters=[_tcp_proxy(f"{lm.name}/tcp", lm.tcp)]
        )
        lst.filter_chains.append(chain)
    if needs_tls:
        lst.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=pack(tls_inspector_pb2.TlsInspector()),
            )
        )
    if not lst.filter_chains:
        # A Gateway listener with nothing routable yet (e.g. a TLS listener without routes): keep the
        # port bound so it is programmed, and refuse connections by closing them.
        lst.filter_chains.append(
            listener_components_pb2.FilterChain(name="empty", filters=[_blackhole(lm.name)])
        )
        out.resources[CLUSTER][BLACKHOLE] = blackhole_cluster()
    out.resources[LISTENER][lm.name] = lst
