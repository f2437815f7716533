"""HTTPRoute/GRPCRoute rules → model routes: matches, filters, backends (with ResolvedRefs reasons)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .index import GW_GROUP, Index, as_dict, as_int, as_list
from .model import Backend, Cors, HeaderFilter, Match, Mirror, Redirect, Retry, Rewrite, Route

__all__ = ["RuleResult", "duration_s", "resolve_backend", "tls_blocked", "translate_rule"]

_DUR = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def duration_s(text: Any) -> float | None:
    """A Gateway API duration (``10s``, ``1h2m``, ``500ms``) in seconds; None when absent or bad."""
    if not isinstance(text, str) or not text:
        return None
    pos, total = 0, 0.0
    for m in _DUR.finditer(text):
        if m.start() != pos:
            return None
        pos = m.end()
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[m.group(2)]
    return total if pos == len(text) else None


def resolve_backend(
    idx: Index, ref: Any, route_kind: str, route_ns: str, h2: bool = False, l7: bool = True
) -> tuple[Backend | None, str, str]:
    """A backendRef → (Backend, "", "") or (None, reason, message) with the spec's ResolvedRefs reason."""
    if not isinstance(ref, dict):
        return None, "InvalidKind", "backendRef is not an object"
    group, kind = ref.get("group", ""), ref.get("kind", "Service")
    name = str(ref.get("name", ""))
    if group not in ("", "core") or kind != "Service":
        return None, "InvalidKind", f"backendRef {group}/{kind} {name} is not a Service"
    ns = str(ref.get("namespace") or route_ns)
    if ns != route_ns and not idx.grant_allows(GW_GROUP, route_kind, route_ns, "", "Service", ns, name):
        return None, "RefNotPermitted", f"backendRef to {ns}/{name} is not permitted by any ReferenceGrant"
    svc = idx.get("Service", ns, name)
    if svc is None:
        return None, "BackendNotFound", f"Service {ns}/{name} not found"
    port = ref.get("port")
    sport = None
    for p in as_list((as_dict(svc.get("spec"))).get("ports")):
        if isinstance(p, dict) and p.get("port") == port:
            sport = p
    if sport is None:
        return None, "BackendNotFound", f"Service {ns}/{name} has no port {port}"
    weight = ref.get("weight", 1)
    if not isinstance(weight, int) or weight < 0:
        weight = 1
    h2 = h2 or sport.get("appProtocol") in ("kubernetes.io/h2c", "h2c", "grpc")
    b = Backend(ns, name, as_int(sport["port"]), weight=weight, h2=h2)
    if l7:
        b.tls = idx.backend_tls.get((ns, name, str(sport.get("name") or ""))) or idx.backend_tls.get(
            (ns, name, "")
        )
    return b, "", ""


def tls_blocked(b: Backend) -> bool:
    """An invalid BackendTLSPolicy applies: never send this backend plaintext (fail closed, 500)."""
    return b.tls is not None and b.tls.error is not None


def _headers_filter(raw: Any) -> HeaderFilter:
    raw = raw if isinstance(raw, dict) else {}
    return HeaderFilter(
        add=[
            (str(h.get("name", "")), str(h.get("value", "")))
            for h in as_list(raw.get("add"))
            if isinstance(h, dict)
        ],
        set=[
            (str(h.get("name", "")), str(h.get("value", "")))
            for h in as_list(raw.get("set"))
            if isinstance(h, dict)
        ],
        remove=[str(x) for x in as_list(raw.get("remove"))],
    )


def _path_modifier(raw: Any) -> tuple[str, str]:
    raw = raw if isinstance(raw, dict) else {}
    t = raw.get("type")
    if t == "ReplaceFullPath":
        return "full", str(raw.get("replaceFullPath", "/"))
    if t == "ReplacePrefixMatch":
        return "prefix", str(raw.get("replacePrefixMatch", "/"))
    return "", ""


def _header_matches(raw: Any) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for h in as_list(raw):
        if not isinstance(h, dict):
            continue
        name = str(h.get("name", ""))
        # The spec: with several matches for one header name, only the first counts.
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        kind = "regex" if h.get("type") == "RegularExpression" else "exact"
        out.append((name, kind, str(h.get("value", ""))))
    return out


def _http_match(raw: Any) -> Match:
    raw = raw if isinstance(raw, dict) else {}
    path = as_dict(raw.get("path"))
    ptype = {"Exact": "exact", "RegularExpression": "regex"}.get(path.get("type", "PathPrefix"), "prefix")
    m = Match(path_type=ptype, path=str(path.get("value", "/")))
    m.headers = _header_matches(raw.get("headers"))
    q: list[tuple[str, str, str]] = []
    for h in as_list(raw.get("queryParams")):
        if isinstance(h, dict):
            kind = "regex" if h.get("type") == "RegularExpression" else "exact"
            q.append((str(h.get("name", "")), kind, str(h.get("value", ""))))
    m.query = q
    m.method = str(raw.get("method") or "").upper()
    return m


def _grpc_match(raw: Any) -> Match:
    raw = raw if isinstance(raw, dict) else {}
    meth = as_dict(raw.get("method"))
    svc, name = str(meth.get("service") or ""), str(meth.get("method") or "")
    regex = meth.get("type") == "RegularExpression"
    if svc and name:
        m = Match("regex", f"/{svc}/{name}") if regex else Match("exact", f"/{svc}/{name}")
    elif svc:
        m = Match("regex", f"/{svc}/[^/]+") if regex else Match("prefix", f"/{svc}")
    elif name:
        m = Match("regex", f"/[^/]+/{name if regex else re.escape(name)}")
    else:
        m = Match("prefix", "/")
    m.headers = _header_matches(raw.get("headers"))
    return m


@dataclass
class RuleResult:
    routes: list[Route] = field(default_factory=list)
    # First ResolvedRefs failure (reason, message) of this rule, if any.
    unresolved: tuple[str, str] | None = None
    invalid: str = ""  # a reason to set Accepted=False (UnsupportedValue)
    invalid_message: str = ""
    blocked: list[Backend] = field(default_factory=list)  # dropped by an invalid BackendTLSPolicy


def _cors(c: dict[str, Any]) -> Cors:
    def strs(key: str) -> list[str]:
        return [str(x) for x in as_list(c.get(key)) if isinstance(x, str)]

    return Cors(
        allow_origins=strs("allowOrigins"),
        allow_methods=strs("allowMethods"),
        allow_headers=strs("allowHeaders"),
        expose_headers=strs("exposeHeaders"),
        allow_credentials=c.get("allowCredentials") is True,
        max_age_s=as_int(c.get("maxAge"), 5),
    )


def _valid_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def translate_rule(
    idx: Index, kind: str, ns: str, rule: Any, rule_index: int, meta_: dict[str, Any]
) -> RuleResult:
    res = RuleResult()
    rule = rule if isinstance(rule, dict) else {}
    grpc = kind == "GRPCRoute"
    raw_matches = as_list(rule.get("matches")) or [{}]
    matches = [_grpc_match(x) if grpc else _http_match(x) for x in raw_matches]
    for m in matches:
        regexes = [v for _, t, v in m.headers + m.query if t == "regex"]
        if m.path_type == "regex":
            regexes.append(m.path)
        if not all(_valid_regex(r) for r in regexes) or (
            m.path_type != "regex" and not m.path.startswith("/")
        ):
            res.invalid = "UnsupportedValue"
            res.invalid_message = "Route has an invalid regular expression or path"
            return res
    if rule.get("sessionPersistence") is not None:
        # Refused in status rather than dropped: a client relying on stickiness must learn it has none.
        res.invalid = "UnsupportedValue"
        res.invalid_message = "sessionPersistence is not supported by nodemesh"
        return res
    base = Route(match=Match())
    status = 0
    for f in as_list(rule.get("filters")):
        if not isinstance(f, dict):
            continue
        t = f.get("type")
        if t == "RequestHeaderModifier":
            base.request_headers = _headers_filter(f.get("requestHeaderModifier"))
        elif t == "ResponseHeaderModifier":
            base.response_headers = _headers_filter(f.get("responseHeaderModifier"))
        elif t == "RequestRedirect" and not grpc:
            r = as_dict(f.get("requestRedirect"))
            ptype, pval = _path_modifier(r.get("path"))
            base.redirect = Redirect(
                scheme=str(r.get("scheme") or ""),
                hostname=str(r.get("hostname") or ""),
                port=int(r["port"]) if isinstance(r.get("port"), int) else None,
                path_type=ptype,
                path=pval,
                status_code=as_int(r.get("statusCode"), 302),
            )
        elif t == "URLRewrite" and not grpc:
            r = as_dict(f.get("urlRewrite"))
            ptype, pval = _path_modifier(r.get("path"))
            base.rewrite = Rewrite(hostname=str(r.get("hostname") or ""), path_type=ptype, path=pval)
        elif t == "RequestMirror":
            r = as_dict(f.get("requestMirror"))
            b, reason, msg = resolve_backend(idx, r.get("backendRef"), kind, ns, h2=grpc)
            if b is None:
                res.unresolved = res.unresolved or (reason, msg)
                continue
            if tls_blocked(b):
                continue
            per_million = 1_000_000
            if isinstance(r.get("percent"), int):
                per_million = r["percent"] * 10_000
            elif isinstance(r.get("fraction"), dict):
                fr = r["fraction"]
                num, den = as_int(fr.get("numerator")), as_int(fr.get("denominator"), 100)
                per_million = num * 1_000_000 // max(den, 1)
            base.mirrors.append(Mirror(b, per_million))
        elif t == "CORS" and not grpc:
            base.cors = _cors(as_dict(f.get("cors")))
        else:
            # ExtensionRef and anything unknown: the rule must not forward (spec: 500).
            status = 500
    timeouts = as_dict(rule.get("timeouts"))
    req_t, be_t = duration_s(timeouts.get("request")), duration_s(timeouts.get("backendRequest"))
    ts = [t for t in (req_t, be_t) if t is not None]
    base.timeout_s = min(ts) if ts else None
    if isinstance(rule.get("retry"), dict):
        r = rule["retry"]
        base.retry = Retry(
            codes=[c for c in as_list(r.get("codes")) if isinstance(c, int) and 400 <= c <= 599],
            attempts=as_int(r.get("attempts"), 1),
            backoff_s=duration_s(r.get("backoff")),
        )
    backends: list[Backend] = []
    refs = as_list(rule.get("backendRefs"))
    for ref in refs:
        b, reason, msg = resolve_backend(idx, ref, kind, ns, h2=grpc)
        if b is None:
            res.unresolved = res.unresolved or (reason, msg)
            # The spec: requests that would have gone to an invalid backendRef get 500 (its share only).
            w = as_int(as_dict(ref).get("weight"), 1)
            if w > 0:
                backends.append(Backend("", "", 0, weight=w, invalid=True))
            continue
        unsupported = False
        for bf in (as_list(ref.get("filters"))) if isinstance(ref, dict) else []:
            if isinstance(bf, dict) and bf.get("type") == "RequestHeaderModifier":
                b.request_headers = _headers_filter(bf.get("requestHeaderModifier"))
            elif isinstance(bf, dict) and bf.get("type") == "ResponseHeaderModifier":
                b.response_headers = _headers_filter(bf.get("responseHeaderModifier"))
            else:
                # Any other filter here (ExtensionRef, a redirect or mirror per backend) is one nodemesh
                # does not apply per backend; the spec: never skip a filter — that backend's share gets 500.
                unsupported = True
        if unsupported:
            if b.weight > 0:
                backends.append(Backend("", "", 0, weight=b.weight, invalid=True))
            continue
        if tls_blocked(b):
            res.blocked.append(b)
            if b.weight > 0:
                backends.append(Backend("", "", 0, weight=b.weight, invalid=True))
        elif b.weight > 0:
            backends.append(b)
    if base.redirect is None and not any(not b.invalid for b in backends):
        status = 500  # no backendRefs, all unresolvable, or all weight 0
    for mi, m in enumerate(matches):
        route = Route(
            match=m,
            backends=backends if not status else [],
            direct_status=status if base.redirect is None else 0,
            request_headers=base.request_headers,
            response_headers=base.response_headers,
            redirect=base.redirect,
            rewrite=base.rewrite,
            mirrors=base.mirrors,
            timeout_s=base.timeout_s,
            retry=base.retry,
            cors=base.cors,
            created=str(meta_.get("creationTimestamp", "")),
            source=f"{ns}/{meta_.get('name', '')}",
            rule_index=rule_index,
            match_index=mi,
        )
        res.routes.append(route)
    return res
