"""CiliumEnvoyConfig / CiliumClusterwideEnvoyConfig: raw Envoy resources, names qualified as Cilium does.

Each ``spec.resources[]`` item is a JSON-encoded ``Any`` (``@type`` + fields). Unqualified names (no
``/``) become ``<namespace>/<cec name>/<name>`` (``<cec name>/<name>`` for the clusterwide kind), and
so do the references between them (RDS route names, route and tcp_proxy clusters, mirror clusters,
EDS cluster names, SDS secret names) so a CEC's resources keep pointing at each other
(``pkg/policy/api/utils.go`` ``ResourceQualifiedName``). Config sources are forced to ADS.
``spec.backendServices`` get ClusterLoadAssignments ``<ns>/<svc>:<port>`` from EndpointSlices.
``spec.nodeSelector`` limits the resources to matching nodes (``Translation.node_resources``).
A resource that does not parse is reported in ``Translation.errors`` and skipped; a Listener
without an address is rejected (nodemesh allocates no proxy ports).
"""

from __future__ import annotations

from typing import Any

# Imported for their side effect: registering the message types ``@type`` may name.
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 as hcm_pb2
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 as tcp_pb2
import envoy.extensions.transport_sockets.tls.v3.tls_pb2 as tls_pb2
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from .envoy_cluster import load_assignment, slices_by_service
from .envoy_common import ads
from .index import Index, as_dict, as_int, as_list, meta, selector_matches
from .model import Backend, Model
from .types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TranslateInput, Translation

__all__ = ["ingest", "qualify"]

_TYPES: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}
_ = (envoy.extensions.filters.http.router.v3.router_pb2, envoy.extensions.filters.listener.tls_inspector.v3)


def qualify(prefix: str, name: str) -> str:
    return name if not name or "/" in name else f"{prefix}/{name}"


def _fix_any(a: any_pb2.Any, msg_type: type[Message], fn: Any) -> None:
    if a.type_url.endswith("/" + msg_type.DESCRIPTOR.full_name):
        m = msg_type()
        a.Unpack(m)
        fn(m)
        a.Pack(m)


def _routes(rc: route_pb2.RouteConfiguration, q: Any) -> None:
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            if r.HasField("route"):
                if r.route.cluster:
                    r.route.cluster = q(r.route.cluster)
                for wc in r.route.weighted_clusters.clusters:
                    wc.name = q(wc.name)
                for mp in r.route.request_mirror_policies:
                    mp.cluster = q(mp.cluster)


def _tls_ctx(ctx: Any, q: Any) -> None:
    for s in ctx.common_tls_context.tls_certificate_sds_secret_configs:
        s.name = q(s.name)
        s.sds_config.CopyFrom(ads())
    vc = ctx.common_tls_context.validation_context_sds_secret_config
    if vc.name:
        vc.name = q(vc.name)
        vc.sds_config.CopyFrom(ads())


def _listener(lst: listener_pb2.Listener, q: Any) -> None:
    def hcm(m: hcm_pb2.HttpConnectionManager) -> None:
        if m.HasField("rds"):
            m.rds.route_config_name = q(m.rds.route_config_name)
            m.rds.config_source.CopyFrom(ads())
        if m.HasField("route_config"):
            _routes(m.route_config, q)

    def tcp(m: tcp_pb2.TcpProxy) -> None:
        if m.cluster:
            m.cluster = q(m.cluster)
        for wc in m.weighted_clusters.clusters:
            wc.name = q(wc.name)

    for chain in [
        *lst.filter_chains,
        *([lst.default_filter_chain] if lst.HasField("default_filter_chain") else []),
    ]:
        for f in chain.filters:
            _fix_any(f.typed_config, hcm_pb2.HttpConnectionManager, hcm)
            _fix_any(f.typed_config, tcp_pb2.TcpProxy, tcp)
        if chain.HasField("transport_socket"):
            _fix_any(
                chain.transport_socket.typed_config, tls_pb2.DownstreamTlsContext, lambda m: _tls_ctx(m, q)
            )


def _cluster(c: cluster_pb2.Cluster, q: Any) -> None:
    if c.HasField("eds_cluster_config"):
        if c.eds_cluster_config.service_name:
            c.eds_cluster_config.service_name = q(c.eds_cluster_config.service_name)
        c.eds_cluster_config.eds_config.CopyFrom(ads())
    if c.HasField("transport_socket"):
        _fix_any(c.transport_socket.typed_config, tls_pb2.UpstreamTlsContext, lambda m: _tls_ctx(m, q))


def _parse(item: Any) -> tuple[str, Message]:
    if not isinstance(item, dict) or "@type" not in item:
        raise ValueError("not an object with @type")
    type_url = str(item["@type"])
    cls = _TYPES.get(type_url)
    if cls is None:
        raise ValueError(f"unsupported resource type {type_url}")
    a = any_pb2.Any()
    json_format.ParseDict(item, a)
    msg = cls()
    if not a.Unpack(msg):
        raise ValueError(f"cannot decode {type_url}")
    return type_url, msg


def _one(idx: Index, inp: TranslateInput, cec: dict[str, Any], kind: str, out: Translation) -> None:
    m = meta(cec)
    ns, name = m.get("namespace", ""), m.get("name", "")
    prefix = f"{ns}/{name}" if ns else name
    spec = as_dict(cec.get("spec"))

    def q(n: str) -> str:
        return qualify(prefix, n)

    resources: dict[str, dict[str, Message]] = {}
    for i, item in enumerate(as_list(spec.get("resources"))):
        try:
            type_url, msg = _parse(item)
        except (ValueError, json_format.ParseError, TypeError) as e:
            out.errors.append(f"{kind} {prefix}: resource {i}: {e}")
            continue
        if isinstance(msg, listener_pb2.Listener):
            if not msg.HasField("address"):
                out.errors.append(f"{kind} {prefix}: listener {msg.name!r} has no address")
                continue
            msg.name = q(msg.name)
            _listener(msg, q)
        elif isinstance(msg, route_pb2.RouteConfiguration):
            msg.name = q(msg.name)
            _routes(msg, q)
        elif isinstance(msg, cluster_pb2.Cluster):
            msg.name = q(msg.name)
            _cluster(msg, q)
        elif isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
            msg.cluster_name = q(msg.cluster_name)
        elif isinstance(msg, secret_pb2.Secret):
            msg.name = q(msg.name)
        key = msg.cluster_name if isinstance(msg, endpoint_pb2.ClusterLoadAssignment) else msg.name  # type: ignore[attr-defined]
        resources.setdefault(type_url, {})[key] = msg
    slices = slices_by_service(idx)
    for bs in as_list(spec.get("backendServices")):
        if not isinstance(bs, dict):
            continue
        bns, bname = str(bs.get("namespace") or ns), str(bs.get("name", ""))
        svc = idx.get("Service", bns, bname)
        if svc is None:
            out.errors.append(f"{kind} {prefix}: backendService {bns}/{bname} not found")
            continue
        wanted = {str(p) for p in as_list(bs.get("number"))}
        for p in as_list((as_dict(svc.get("spec"))).get("ports")):
            if (
                isinstance(p, dict)
                and isinstance(p.get("port"), int)
                and (not wanted or str(p["port"]) in wanted)
            ):
                b = Backend(bns, bname, as_int(p["port"]))
                resources.setdefault(ENDPOINT, {})[b.eds_name] = load_assignment(
                    idx, b, slices.get(f"{bns}/{bname}", [])
                )
    selector = spec.get("nodeSelector")
    if selector is None:
        for t, rs in resources.items():
            out.resources.setdefault(t, {}).update(rs)
        return
    for node in inp.nodes:
        nobj = idx.get("Node", "", node)
        labels = dict(as_dict(meta(nobj).get("labels"))) if nobj else {}
        labels.setdefault("kubernetes.io/hostname", node)
        if selector_matches(selector, labels):
            dest = out.node_resources.setdefault(node, {})
            for t, rs in resources.items():
                dest.setdefault(t, {}).update(rs)


def ingest(idx: Index, inp: TranslateInput, model: Model, out: Translation) -> None:
    for cec in idx.all("CiliumEnvoyConfig"):
        _one(idx, inp, cec, "CiliumEnvoyConfig", out)
    for cec in idx.all("CiliumClusterwideEnvoyConfig"):
        _one(idx, inp, cec, "CiliumClusterwideEnvoyConfig", out)
