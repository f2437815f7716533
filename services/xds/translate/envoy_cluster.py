"""Backends → Clusters (EDS over ADS) and ClusterLoadAssignments from EndpointSlices; Secrets → SDS.

Cluster ``<ns>:<svc>:<port>`` with EDS service name ``<ns>/<svc>:<port>`` (research §5.2). Only
ready endpoints are used. The EndpointSlice port is found by the Service port's name, which is how
the EndpointSlice controller names them (so targetPort, numeric or named, is already resolved).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2

from .backendtls import SYSTEM_CA_BUNDLE
from .envoy_common import ads
from .index import Index, as_dict, as_list, meta
from .model import Backend

__all__ = ["BLACKHOLE", "blackhole_cluster", "cluster", "load_assignment", "sds_secret", "service_port_name"]

BLACKHOLE = "nodemesh/blackhole"
_H2_OPTS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster(b: Backend, lb_policy: str = "") -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=b.cluster,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=5),
        lb_policy={
            "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
            "random": cluster_pb2.Cluster.RANDOM,
        }.get(lb_policy, cluster_pb2.Cluster.ROUND_ROBIN),
    )
    c.eds_cluster_config.service_name = b.eds_name
    c.eds_cluster_config.eds_config.CopyFrom(ads())
    if b.tls is not None and b.tls.error is None:
        c.transport_socket.name = "envoy.transport_sockets.tls"
        c.transport_socket.typed_config.Pack(_upstream_tls(b.tls))
    if b.h2:
        opts = hpo.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        c.typed_extension_protocol_options[_H2_OPTS].Pack(opts)
    return c


def _upstream_tls(bt: Any) -> tls_pb2.UpstreamTlsContext:
    """Origination per a BackendTLSPolicy: SNI and the peer's DNS SAN = hostname, trusted CAs only."""
    ctx = tls_pb2.UpstreamTlsContext(sni=bt.hostname)
    vc = ctx.common_tls_context.validation_context
    if bt.system:
        vc.trusted_ca.filename = SYSTEM_CA_BUNDLE
    else:
        vc.trusted_ca.inline_bytes = bt.ca_pem
    vc.match_typed_subject_alt_names.append(
        common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=bt.hostname)
        )
    )
    return ctx


def blackhole_cluster() -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC, connect_timeout=duration_pb2.Duration(seconds=1)
    )
    c.load_assignment.cluster_name = BLACKHOLE
    return c


def service_port_name(idx: Index, ns: str, svc: str, port: int) -> str | None:
    s = idx.get("Service", ns, svc)
    for p in as_list((as_dict((as_dict(s)).get("spec"))).get("ports")):
        if isinstance(p, dict) and p.get("port") == port:
            return str(p.get("name") or "")
    return None


def load_assignment(
    idx: Index, b: Backend, slices: list[dict[str, Any]]
) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=b.eds_name)
    pname = service_port_name(idx, b.namespace, b.service, b.port)
    seen: set[tuple[str, int]] = set()
    lbe: list[endpoint_components_pb2.LbEndpoint] = []
    for sl in slices:
        port = None
        for p in as_list(sl.get("ports")):
            if isinstance(p, dict) and (p.get("name") or "") == (pname or ""):
                port = p.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            continue
        for ep in as_list(sl.get("endpoints")):
            if not isinstance(ep, dict):
                continue
            if (as_dict(ep.get("conditions"))).get("ready") is False:
                continue
            for addr in as_list(ep.get("addresses")):
                if not isinstance(addr, str) or (addr, port) in seen:
                    continue
                seen.add((addr, port))
                lbe.append(
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(address=str(addr), port_value=port)
                            )
                        )
                    )
                )
    if lbe:
        lbe.sort(
            key=lambda e: (
                e.endpoint.address.socket_address.address,
                e.endpoint.address.socket_address.port_value,
            )
        )
        cla.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lbe))
    return cla


def slices_by_service(idx: Index) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for sl in idx.all("EndpointSlice"):
        m = meta(sl)
        svc = (as_dict(m.get("labels"))).get("kubernetes.io/service-name")
        if svc:
            out.setdefault(f"{m.get('namespace', '')}/{svc}", []).append(sl)
    return out


def _b64(data: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(str(data.get(key, "")), validate=True)
    except (binascii.Error, ValueError):
        return b""


def sds_secret(name: str, secret: dict[str, Any]) -> secret_pb2.Secret | None:
    """A Kubernetes TLS Secret (or a CA bundle) → an Envoy SDS Secret; None when it holds neither."""
    data = as_dict(secret.get("data"))
    crt, key, ca = _b64(data, "tls.crt"), _b64(data, "tls.key"), _b64(data, "ca.crt")
    out = secret_pb2.Secret(name=name)
    if crt and key:
        out.tls_certificate.certificate_chain.CopyFrom(base_pb2.DataSource(inline_bytes=crt))
        out.tls_certificate.private_key.CopyFrom(base_pb2.DataSource(inline_bytes=key))
    elif ca:
        out.validation_context.CopyFrom(
            common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=ca))
        )
    else:
        return None
    return out
