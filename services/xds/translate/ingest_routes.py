"""Routes (HTTPRoute, GRPCRoute, TLSRoute, TCPRoute) → attachment to Gateway listeners, model, status.

For every parentRef that names one of our Gateways: pick the listeners (sectionName, port), keep
those that allow the route (kind, namespace) and share a hostname with it, attach, and write the
per-parent conditions Accepted and ResolvedRefs with the spec's reasons.
"""

from __future__ import annotations

from typing import Any

from nodemesh.messages.k8s import StatusPatch

from .index import (
    GW_GROUP,
    Index,
    as_dict,
    as_int,
    as_list,
    hostname_matches,
    intersect_hostnames,
    meta,
    more_specific,
    selector_matches,
)
from .ingest_gateway import FIELD_MANAGER, GatewayListener, GatewayState, usable
from .model import Backend, ListenerModel, Model, PassthroughChain, RouteTable, TLSChain
from .rules import resolve_backend, translate_rule
from .status import condition, keep_transition_times
from .types import TranslateInput, Translation

__all__ = ["ROUTE_KINDS", "ingest_routes", "prepare_listeners"]

ROUTE_KINDS = {"HTTPRoute": "v1", "GRPCRoute": "v1", "TLSRoute": "v1alpha2", "TCPRoute": "v1alpha2"}


def _secret_name(ns: str, name: str) -> str:
    return f"{ns}/{name}"


def prepare_listeners(
    states: list[GatewayState], model: Model, out: Translation
) -> dict[tuple[str, str], Any]:
    """Create the Envoy listener skeletons for every usable Gateway listener.

    Returns ``(gateway key, listener name) → RouteTable | PassthroughChain list holder`` so routes
    can be added. A Gateway without an address gets no Envoy listener (nothing to bind yet).
    """
    slots: dict[tuple[str, str], Any] = {}
    for st in states:
        if not st.address or st.refused:
            continue
        info = out.gateways.get(st.key)
        for lst in st.listeners:
            if not usable(lst):
                continue
            lm = model.listener(f"{st.prefix}/listener-{lst.port}", st.address, lst.port)
            src = f"Gateway/{st.key}"
            if src not in lm.sources:
                lm.sources.append(src)
            if info is not None and lm.name not in info.envoy_listeners:
                info.envoy_listeners.append(lm.name)
            host = lst.hostname or "*"
            if lst.protocol == "HTTP":
                if lm.http is None:
                    lm.http = RouteTable(f"{st.prefix}/listener-insecure-{lst.port}", lst.port)
                lm.http.vhosts.setdefault(host, [])
                slots[(st.key, lst.name)] = lm.http
            elif lst.protocol == "HTTPS" or (lst.protocol == "TLS" and lst.tls_mode == "Terminate"):
                table = RouteTable(f"{st.prefix}/listener-secure-{lst.port}-{lst.name}", lst.port)
                table.vhosts.setdefault(host, [])
                secrets = []
                for ns, name in lst.secrets:
                    model.secrets[_secret_name(ns, name)] = (ns, name)
                    secrets.append(_secret_name(ns, name))
                if secrets:
                    names = [] if not lst.hostname else [lst.hostname]
                    chain = TLSChain(server_names=names, secrets=secrets, routes=table)
                    chain.client_validation = lst.client_validation
                    lm.tls.append(chain)
                    if lst.protocol == "TLS":
                        # TLSRoute on a terminating listener: decrypt, then TCP-proxy (no HTTP).
                        chain.tcp = []
                        slots[(st.key, lst.name)] = chain
                        continue
                slots[(st.key, lst.name)] = table
            elif lst.protocol == "TLS":
                slots[(st.key, lst.name)] = lm
            elif lst.protocol == "TCP":
                slots[(st.key, lst.name)] = lm
    return slots


def _ns_allowed(idx: Index, lst: GatewayListener, gw_ns: str, route_ns: str) -> bool:
    if lst.allowed_from == "All":
        return True
    if lst.allowed_from == "Selector":
        return selector_matches(lst.allowed_selector, idx.namespace_labels(route_ns))
    return route_ns == gw_ns


def _covers(listener_host: str, h: str) -> bool:
    """Whether every host matching ``h`` also matches ``listener_host`` ("" = any)."""
    if not listener_host:
        return True
    if not listener_host.startswith("*."):
        return h == listener_host
    if h.startswith("*."):
        return h == listener_host or h.endswith(listener_host[1:])
    return hostname_matches(listener_host, h)


def _isolated(hostname: str, lst: GatewayListener, siblings: list[GatewayListener]) -> bool:
    """Listener isolation: hosts are served only by routes of the most specific listener matching them.

    A route hostname is dropped from a listener when a more specific listener on the same port covers
    it entirely; partial overlaps are resolved by Envoy picking the most specific virtual host (each
    listener hostname always has one).
    """
    if hostname == "*":
        return False
    for other in siblings:
        if other is lst or other.port != lst.port or not usable(other) or other.protocol != lst.protocol:
            continue
        if more_specific(other.hostname, lst.hostname) and _covers(other.hostname, hostname):
            return True
    return False


def _parent_status(
    ref: dict[str, Any],
    st: GatewayState,
    accepted: tuple[bool, str, str],
    resolved: tuple[bool, str, str],
    gen: int,
    now: str,
    old: list[dict[str, Any]] | None,
    controller: str,
) -> dict[str, Any]:
    pref = {"group": GW_GROUP, "kind": "Gateway", "namespace": st.namespace, "name": st.name}
    for k in ("sectionName", "port"):
        if k in ref:
            pref[k] = ref[k]
    conds = [
        condition("Accepted", accepted[0], accepted[1], accepted[2], gen, now),
        condition("ResolvedRefs", resolved[0], resolved[1], resolved[2], gen, now),
    ]
    return {"parentRef": pref, "controllerName": controller, "conditions": keep_transition_times(conds, old)}


def _sort_key(o: dict[str, Any]) -> tuple[str, str, str]:
    m = meta(o)
    return (str(m.get("creationTimestamp", "")), m.get("namespace", ""), m.get("name", ""))


def ingest_routes(
    idx: Index,
    inp: TranslateInput,
    states: list[GatewayState],
    model: Model,
    slots: dict[tuple[str, str], Any],
    out: Translation,
) -> None:
    by_key = {st.key: st for st in states}
    controller = inp.controller_names[0]
    for kind, version in ROUTE_KINDS.items():
        # Oldest first: on conflicts (same SNI, TCP listener) the older route wins, as the spec asks.
        for route in sorted(idx.all(kind), key=_sort_key):
            _route(idx, inp, kind, version, route, by_key, model, slots, out, controller)


def _route(
    idx: Index,
    inp: TranslateInput,
    kind: str,
    version: str,
    route: dict[str, Any],
    by_key: dict[str, GatewayState],
    model: Model,
    slots: dict[tuple[str, str], Any],
    out: Translation,
    controller: str,
) -> None:
    m = meta(route)
    ns, name = m.get("namespace", ""), m.get("name", "")
    gen = as_int(m.get("generation"), 1)
    spec = as_dict(route.get("spec"))
    hostnames = [str(h) for h in as_list(spec.get("hostnames"))]
    old_parents = as_list((as_dict(route.get("status"))).get("parents"))
    parents: list[dict[str, Any]] = []
    http_like = kind in ("HTTPRoute", "GRPCRoute")
    # Rules are translated once; the same model routes go to every attached listener.
    rules_out = []
    unresolved: tuple[str, str] | None = None
    invalid, invalid_message = "", ""
    backends_l4: list[Backend] = []
    if http_like:
        for i, rule in enumerate(as_list(spec.get("rules"))):
            rr = translate_rule(idx, kind, ns, rule, i, m)
            unresolved = unresolved or rr.unresolved
            if rr.invalid and not invalid:
                invalid, invalid_message = rr.invalid, rr.invalid_message
            rules_out.append(rr)
    else:
        for rule in as_list(spec.get("rules")):
            for ref in as_list((as_dict(rule)).get("backendRefs")):
                b, reason, msg = resolve_backend(idx, ref, kind, ns, l7=False)
                if b is None:
                    unresolved = unresolved or (reason, msg)
                elif b.weight > 0:
                    backends_l4.append(b)
    resolved = (
        (False, unresolved[0], unresolved[1]) if unresolved else (True, "ResolvedRefs", "Resolved Refs")
    )
    for ref in as_list(spec.get("parentRefs")):
        if not isinstance(ref, dict):
            continue
        if ref.get("group", GW_GROUP) != GW_GROUP or ref.get("kind", "Gateway") != "Gateway":
            continue
        gkey = f"{ref.get('namespace') or ns}/{ref.get('name', '')}"
        st = by_key.get(gkey)
        if st is None:
            continue
        old = next(
            (
                p.get("conditions")
                for p in old_parents
                if isinstance(p, dict) and (as_dict(p.get("parentRef"))).get("name") == st.name
            ),
            None,
        )
        cands = [x for x in st.listeners if x.accepted]
        section, port = ref.get("sectionName"), ref.get("port")
        if section:
            cands = [x for x in cands if x.name == section]
        if port:
            cands = [x for x in cands if x.port == port]
        if not cands:
            acc = (False, "NoMatchingParent", "No listener matches the parentRef")
        elif invalid:
            acc = (False, invalid, invalid_message or "Route has an unsupported value")
        else:
            allowed = [x for x in cands if kind in x.kinds and _ns_allowed(idx, x, st.namespace, ns)]
            matching = [(x, intersect_hostnames(x.hostname, hostnames)) for x in allowed]
            matching = [(x, hs) for x, hs in matching if hs]
            if not allowed:
                acc = (False, "NotAllowedByListeners", "Route is not allowed by any listener")
            elif not matching:
                acc = (False, "NoMatchingListenerHostname", "No listener hostname matches the route")
            else:
                acc = (True, "Accepted", "Accepted HTTPRoute" if kind == "HTTPRoute" else f"Accepted {kind}")
                for lst, hs in matching:
                    lst.attached += 1
                    slot = slots.get((st.key, lst.name))
                    if slot is None:
                        continue
                    if http_like:
                        for rr in rules_out:
                            for b in rr.blocked:
                                model.gateways_of.setdefault((b.namespace, b.service), set()).add(st.key)
                        for h in hs:
                            if _isolated(h, lst, st.listeners):
                                continue
                            for rr in rules_out:
                                for r in rr.routes:
                                    slot.add(h, r)
                                    for b in r.backends:
                                        if b.invalid:
                                            continue
                                        model.use(b)
                                        model.gateways_of.setdefault((b.namespace, b.service), set()).add(
                                            st.key
                                        )
                                    for mir in r.mirrors:
                                        model.use(mir.backend)
                    elif backends_l4:
                        _attach_l4(kind, slot, hs, backends_l4, model, f"{ns}/{name}")
        parents.append(_parent_status(ref, st, acc, resolved, gen, inp.now, old, controller))
    if not parents and not any(
        isinstance(p, dict) and p.get("controllerName") == controller for p in old_parents
    ):
        return
    others = [
        p for p in old_parents if isinstance(p, dict) and p.get("controllerName") not in inp.controller_names
    ]
    out.statuses.append(
        StatusPatch(
            kind=kind,
            api_version=f"{GW_GROUP}/{version}",
            namespace=ns,
            name=name,
            status={"parents": others + parents},
            field_manager=FIELD_MANAGER,
            uid=m.get("uid", ""),
        )
    )


def _attach_l4(
    kind: str, lm: ListenerModel | TLSChain, hosts: list[str], backends: list[Backend], model: Model, src: str
) -> None:
    for b in backends:
        model.use(b)
    if isinstance(lm, TLSChain):
        if not lm.tcp:
            lm.tcp = list(backends)  # the oldest route owns the terminating listener
        return
    if kind == "TCPRoute":
        if lm.tcp is None:
            lm.tcp = list(backends)
        return
    names = sorted({h for h in hosts if h != "*"})
    if any(sorted(c.server_names) == names for c in lm.passthrough):
        return  # an older route already owns these SNI names
    lm.passthrough.append(PassthroughChain(server_names=names, backends=list(backends), name=src))
