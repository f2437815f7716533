"""The translation pipeline: ingestion → model → Envoy resources, never raising on bad objects."""

from __future__ import annotations

from . import backendtls, cec, ingest_ingress, ingest_service, l7policy
from .envoy_cluster import cluster, load_assignment, sds_secret, slices_by_service
from .envoy_listener import listener_resources
from .index import Index
from .ingest_gateway import GatewayState, gateway_status, ingest_gateways
from .ingest_routes import ingest_routes, prepare_listeners
from .model import Model
from .types import CLUSTER, ENDPOINT, LISTENER, SECRET, GatewayInfo, TranslateInput, Translation

__all__ = ["run"]


def run(inp: TranslateInput) -> Translation:
    out = Translation()
    idx = Index(inp)
    idx.backend_tls = backendtls.policies(idx)
    model = Model()
    states = ingest_gateways(idx, inp, out)
    for st in states:
        out.gateways[st.key] = _info(st)
    slots = prepare_listeners(states, model, out)
    ingest_routes(idx, inp, states, model, slots, out)
    for st in states:
        gateway_status(st, inp, out)
    backendtls.policy_status(idx.backend_tls, model.gateways_of, inp, out, inp.controller_names[0])
    _extras(idx, inp, model, out)
    envoy(idx, model, out, inp.access_log_cluster)
    l7policy.ingest(inp, out)  # per-node L7 policy listeners (CiliumNetworkPolicy rules.http)
    return out


def _info(st: GatewayState) -> GatewayInfo:
    return GatewayInfo(st.namespace, st.name, st.generation, st.address)


def _extras(idx: Index, inp: TranslateInput, model: Model, out: Translation) -> None:
    """Ingress, L7 load-balanced Services; CiliumEnvoyConfigs go straight to resources."""
    ingest_ingress.ingest(idx, inp, model, out)
    ingest_service.ingest(idx, inp, model, out)
    cec.ingest(idx, inp, model, out)


def envoy(idx: Index, model: Model, out: Translation, access_log_cluster: str = "") -> None:
    """Model → Listeners, RouteConfigurations, Clusters, ClusterLoadAssignments, Secrets."""
    for key in sorted(model.listeners):
        listener_resources(model.listeners[key], out, access_log_cluster)
    for node in sorted(model.node_listeners):
        mine = out.node_resources.setdefault(node, {}).setdefault(LISTENER, {})
        for lm in model.node_listeners[node]:
            listener_resources(lm, out, access_log_cluster)  # its route is shared: the same per node
            mine[lm.name] = out.resources[LISTENER].pop(lm.name)
    slices = slices_by_service(idx)
    for name in sorted(model.backends):
        b = model.backends[name]
        out.resources[CLUSTER][b.cluster] = cluster(b, model.lb_policy.get(b.cluster, ""))
        out.resources[ENDPOINT][b.eds_name] = load_assignment(
            idx, b, slices.get(f"{b.namespace}/{b.service}", [])
        )
    for sds_name, (ns, name) in sorted(model.secrets.items()):
        obj = idx.get("Secret", ns, name)
        sec = sds_secret(sds_name, obj) if obj is not None else None
        if sec is not None:
            out.resources[SECRET][sds_name] = sec
