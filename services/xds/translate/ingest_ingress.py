"""Ingress (class ``nodemesh``, alias ``cilium``) → model listeners; status.loadBalancer (research §5.2/§5.3).

Dedicated mode (the default) serves an Ingress on the address of its LoadBalancer Service
``cilium-ingress-<name>``; shared mode (annotation ``ingress.cilium.io/loadbalancer-mode: shared``)
merges every shared Ingress onto the Service ``cilium-ingress`` in the shared namespace. Path types:
Exact → exact, Prefix → segment prefix, ImplementationSpecific → regex (as Cilium). A wildcard host
matches exactly one label (an extra ``:authority`` regex). ``spec.defaultBackend`` answers what no rule
matches; ``ingress.cilium.io/force-https`` redirects plain HTTP to HTTPS.
"""

from __future__ import annotations

import re
from typing import Any

from nodemesh.lbservices import ingress_is_ours, ingress_service
from nodemesh.messages.k8s import StatusPatch

from .index import Index, as_dict, as_int, as_list, meta, valid_tls_secret
from .ingest_gateway import FIELD_MANAGER
from .model import Backend, Match, Model, PassthroughChain, Redirect, Route, RouteTable, TLSChain
from .rules import duration_s
from .types import TranslateInput, Translation

__all__ = ["ingest"]

FORCE_HTTPS = "ingress.cilium.io/force-https"
REQUEST_TIMEOUT = "ingress.cilium.io/request-timeout"
TLS_PASSTHROUGH = "ingress.cilium.io/tls-passthrough"


def _ours(idx: Index, inp: TranslateInput, ing: dict[str, Any]) -> bool:
    return ingress_is_ours(ing, list(idx.all("IngressClass")), tuple(inp.ingress_classes))


def _backend(idx: Index, ns: str, raw: Any) -> Backend | None:
    svc = (as_dict(raw)).get("service") if isinstance(raw, dict) else None
    if not isinstance(svc, dict):
        return None
    name = str(svc.get("name", ""))
    port = as_dict(svc.get("port"))
    obj = idx.get("Service", ns, name)
    if obj is None:
        return None
    for p in as_list((as_dict(obj.get("spec"))).get("ports")):
        if not isinstance(p, dict):
            continue
        if p.get("port") == port.get("number") or (port.get("name") and p.get("name") == port.get("name")):
            return Backend(
                ns, name, as_int(p["port"]), h2=p.get("appProtocol") in ("kubernetes.io/h2c", "grpc")
            )
    return None


def _match(path_type: str, path: str, host: str) -> Match:
    if path_type == "Exact":
        m = Match("exact", path or "/")
    elif path_type == "ImplementationSpecific":
        m = Match("regex", path or "/.*")
    else:
        m = Match("prefix", path or "/")
    if host.startswith("*."):
        m.authority_regex = r"^[^.]+" + re.escape(host[1:]) + r"(:[0-9]+)?$"
    return m


def _routes(idx: Index, ing: dict[str, Any]) -> dict[str, list[Route]]:
    m = meta(ing)
    ns = m.get("namespace", "")
    spec = as_dict(ing.get("spec"))
    src = f"{ns}/{m.get('name', '')}"
    created = str(m.get("creationTimestamp", ""))
    timeout = duration_s(as_dict(m.get("annotations")).get(REQUEST_TIMEOUT))
    vhosts: dict[str, list[Route]] = {}
    for ri, rule in enumerate(as_list(spec.get("rules"))):
        if not isinstance(rule, dict):
            continue
        host = str(rule.get("host") or "*")
        for pi, p in enumerate(as_list((as_dict(rule.get("http"))).get("paths"))):
            if not isinstance(p, dict):
                continue
            b = _backend(idx, ns, p.get("backend"))
            r = Route(
                match=_match(str(p.get("pathType", "Prefix")), str(p.get("path") or "/"), host),
                backends=[b] if b else [],
                direct_status=0 if b else 503,
                timeout_s=timeout,
                created=created,
                source=src,
                rule_index=ri,
                match_index=pi,
            )
            vhosts.setdefault(host, []).append(r)
    default = _backend(idx, ns, spec.get("defaultBackend")) if spec.get("defaultBackend") else None
    if default is not None:
        vhosts.setdefault("*", [])
        for host, routes in vhosts.items():
            # Lowest precedence in every vhost: the rule-less catch-all.
            routes.append(
                Route(
                    match=_match("Prefix", "/", host),
                    backends=[default],
                    created="~",
                    source=src,
                    rule_index=10**6,
                )
            )
    return vhosts


def _passthrough(idx: Index, ing: dict[str, Any], lm: Any, model: Model) -> None:
    """``tls-passthrough``: each rule's host is an SNI routed, still encrypted, to its first backend."""
    m = meta(ing)
    ns = str(m.get("namespace", ""))
    lm.sources.append(f"Ingress/{ns}/{m.get('name', '')}")
    for rule in as_list(as_dict(ing.get("spec")).get("rules")):
        rule = as_dict(rule)
        host = str(rule.get("host") or "")
        paths = as_list(as_dict(rule.get("http")).get("paths"))
        b = _backend(idx, ns, as_dict(paths[0]).get("backend")) if paths else None
        if b is None or not host:
            continue
        names = [host]
        if any(c.server_names == names for c in lm.passthrough):
            continue
        lm.passthrough.append(
            PassthroughChain(server_names=names, backends=[b], name=f"{ns}/{m.get('name', '')}")
        )
        model.use(b)


def _want_lb_service(out: Translation, ns: str, name: str, owner_ns: str, owner: str) -> None:
    if any(s["metadata"]["namespace"] == ns and s["metadata"]["name"] == name for s in out.lb_services):
        return
    labels = {"cilium.io/ingress": "true"}
    if owner:
        labels["ingress.cilium.io/owning-ingress"] = owner
    out.lb_services.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {
                "type": "LoadBalancer",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"name": "https", "port": 443, "protocol": "TCP"},
                ],
            },
        }
    )


def ingest(idx: Index, inp: TranslateInput, model: Model, out: Translation) -> None:
    for ing in idx.all("Ingress"):
        if not _ours(idx, inp, ing):
            continue
        m = meta(ing)
        ns, name = m.get("namespace", ""), m.get("name", "")
        ann = as_dict(m.get("annotations"))
        svc_ns, svc_name, dedicated = ingress_service(
            ing, inp.default_ingress_mode, inp.shared_ingress_namespace
        )
        mode = "dedicated" if dedicated else "shared"
        address = idx.lb_address(svc_ns, svc_name)
        _want_lb_service(
            out, svc_ns, svc_name, ns if mode != "shared" else "", name if mode != "shared" else ""
        )
        out.statuses.append(
            StatusPatch(
                kind="Ingress",
                api_version="networking.k8s.io/v1",
                namespace=ns,
                name=name,
                status={"loadBalancer": {"ingress": [{"ip": address}] if address else []}},
                field_manager=FIELD_MANAGER,
                uid=m.get("uid", ""),
            )
        )
        if not address:
            continue
        prefix = f"{svc_ns}/{svc_name}"
        if str(ann.get(TLS_PASSTHROUGH, "")).lower() in ("enabled", "true"):
            _passthrough(idx, ing, model.listener(f"{prefix}/listener-443", address, 443), model)
            continue
        vhosts = _routes(idx, ing)
        tls_hosts: set[str] = set()
        tls_entries = [t for t in as_list((as_dict(ing.get("spec"))).get("tls")) if isinstance(t, dict)]
        secure = model.listener(f"{prefix}/listener-443", address, 443) if tls_entries else None
        for ti, t in enumerate(tls_entries):
            secret = idx.get("Secret", ns, str(t.get("secretName", "")))
            if secret is None or not valid_tls_secret(secret):
                out.errors.append(
                    f"Ingress {ns}/{name}: TLS secret {t.get('secretName')!r} is missing or invalid"
                )
                continue
            hosts = sorted({str(h) for h in as_list(t.get("hosts"))})
            assert secure is not None
            if any(sorted(c.server_names) == hosts for c in secure.tls):
                continue
            table = RouteTable(f"{prefix}/listener-secure-443-{ns}-{name}-{ti}", 443)
            for h, routes in vhosts.items():
                if h == "*" or not hosts or h in hosts:
                    table.vhosts.setdefault(h, []).extend(routes)
            sds = f"{ns}/{secret['metadata']['name']}"
            model.secrets[sds] = (ns, str(secret["metadata"]["name"]))
            secure.tls.append(TLSChain(server_names=hosts, secrets=[sds], routes=table))
            tls_hosts.update(hosts)
            secure.sources.append(f"Ingress/{ns}/{name}")
        plain = model.listener(f"{prefix}/listener-80", address, 80)
        plain.sources.append(f"Ingress/{ns}/{name}")
        if plain.http is None:
            plain.http = RouteTable(f"{prefix}/listener-insecure-80", 80)
        force = str(ann.get(FORCE_HTTPS, "")).lower() in ("enabled", "true")
        for h, routes in vhosts.items():
            if force and (h in tls_hosts or (tls_hosts and h == "*")):
                plain.http.vhosts.setdefault(h, []).append(
                    Route(
                        match=Match("prefix", "/"),
                        redirect=Redirect(https=True, status_code=301),
                        source=f"{ns}/{name}",
                    )
                )
            else:
                plain.http.vhosts.setdefault(h, []).extend(routes)
        for routes in vhosts.values():
            for r in routes:
                for b in r.backends:
                    model.use(b)
