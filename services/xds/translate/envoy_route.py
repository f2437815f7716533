"""Model route tables → Envoy RouteConfigurations (research §5.3/§5.4, Cilium's envoy_virtual_host.go).

Ordering implements the Gateway API precedence: Exact path (longest first), then RegularExpression
(longest first), then PathPrefix (longest first), then a method match, then more header matches,
then more query matches; ties go to the older route, then ``namespace/name``, then rule order.
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from .envoy_common import pack
from .model import Backend, Cors, HeaderFilter, Match, Redirect, Retry, Route, RouteTable

__all__ = ["CORS_FILTER", "route_configuration", "route_sort_key"]

CORS_FILTER = "envoy.filters.http.cors"

_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def route_sort_key(r: Route) -> tuple[object, ...]:
    m = r.match
    rank = {"exact": 0, "regex": 1, "prefix": 2}[m.path_type]
    plen = len(m.path.rstrip("/")) if m.path_type == "prefix" else len(m.path)
    return (
        rank,
        -plen,
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query),
        r.created,
        r.source,
        r.rule_index,
        r.match_index,
    )


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(google_re2=regex_pb2.RegexMatcher.GoogleRE2(), regex=pattern)


def _route_match(m: Match) -> rc.RouteMatch:
    out = rc.RouteMatch()
    if m.path_type == "exact":
        out.path = m.path
    elif m.path_type == "regex":
        out.safe_regex.CopyFrom(_regex(m.path))
    else:
        p = m.path.rstrip("/")
        if p:
            # /v2 matches /v2, /v2/ and /v2/x but not /v2example (the spec's segment semantics).
            out.path_separated_prefix = p
        else:
            out.prefix = "/"
    for name, kind, value in m.headers:
        hm = rc.HeaderMatcher(name=name.lower())
        if kind == "regex":
            hm.string_match.safe_regex.CopyFrom(_regex(value))
        else:
            hm.string_match.exact = value
        out.headers.append(hm)
    if m.method:
        out.headers.append(
            rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=m.method))
        )
    if m.authority_regex:
        hm = rc.HeaderMatcher(name=":authority")
        hm.string_match.safe_regex.CopyFrom(_regex(m.authority_regex))
        out.headers.append(hm)
    for name, kind, value in m.query:
        qm = rc.QueryParameterMatcher(name=name)
        if kind == "regex":
            qm.string_match.safe_regex.CopyFrom(_regex(value))
        else:
            qm.string_match.exact = value
        out.query_parameters.append(qm)
    return out


def _hv(name: str, value: str, action: int) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=action
    )


def _header_opts(f: HeaderFilter) -> list[base_pb2.HeaderValueOption]:
    out = [_hv(k, v, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD) for k, v in f.set]
    out += [_hv(k, v, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD) for k, v in f.add]
    return out


def _prefix_rewrite(prefix: str, replacement: str) -> tuple[str, str]:
    """(regex, substitution) replacing a matched path prefix, without doubling or losing slashes."""
    p = re.escape(prefix.rstrip("/"))
    rep = replacement.rstrip("/")
    if not rep:
        return f"^{p}/*", "/"
    return f"^{p}", rep


def _redirect(rd: Redirect, m: Match, listener_port: int, listener_scheme: str) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=_CODES.get(rd.status_code, rc.RedirectAction.FOUND))
    if rd.https:
        out.https_redirect = True
        return out
    if rd.scheme:
        out.scheme_redirect = rd.scheme
    if rd.hostname:
        out.host_redirect = rd.hostname
    # The spec's port rules: explicit port; else the new scheme's well-known port; else the listener's.
    if rd.port is not None:
        port = rd.port
    elif rd.scheme:
        port = 443 if rd.scheme == "https" else 80
    else:
        port = listener_port
    scheme = rd.scheme or listener_scheme
    if (scheme, port) not in (("http", 80), ("https", 443)) or rd.port is not None or rd.scheme:
        out.port_redirect = port
    if rd.path_type == "full":
        out.path_redirect = rd.path
    elif rd.path_type == "prefix":
        if m.path_type == "prefix":
            pattern, sub = _prefix_rewrite(m.path, rd.path)
            out.regex_rewrite.pattern.CopyFrom(_regex(pattern))
            out.regex_rewrite.substitution = sub
        else:
            out.path_redirect = rd.path
    return out


def _cluster_weight(b: Backend) -> rc.WeightedCluster.ClusterWeight:
    cw = rc.WeightedCluster.ClusterWeight(name=b.cluster, weight=wrappers_pb2.UInt32Value(value=b.weight))
    if b.request_headers is not None:
        cw.request_headers_to_add.extend(_header_opts(b.request_headers))
        cw.request_headers_to_remove.extend(b.request_headers.remove)
    if b.response_headers is not None:
        cw.response_headers_to_add.extend(_header_opts(b.response_headers))
        cw.response_headers_to_remove.extend(b.response_headers.remove)
    return cw


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _envoy_route(r: Route, listener_port: int, scheme: str) -> rc.Route:
    out = rc.Route(match=_route_match(r.match))
    if r.redirect is not None:
        out.redirect.CopyFrom(_redirect(r.redirect, r.match, listener_port, scheme))
    elif r.direct_status or not r.backends:
        out.direct_response.status = r.direct_status or 500
    else:
        act = out.route
        per_backend = any(b.request_headers or b.response_headers for b in r.backends)
        if len(r.backends) == 1 and not per_backend:
            act.cluster = r.backends[0].cluster
        else:
            act.weighted_clusters.clusters.extend(_cluster_weight(b) for b in r.backends)
        if any(b.invalid for b in r.backends):
            act.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
        if r.rewrite is not None:
            if r.rewrite.hostname:
                act.host_rewrite_literal = r.rewrite.hostname
            if r.rewrite.path_type == "full":
                act.regex_rewrite.pattern.CopyFrom(_regex("^/.*$"))
                act.regex_rewrite.substitution = r.rewrite.path
            elif r.rewrite.path_type == "prefix" and r.match.path_type == "prefix":
                pattern, sub = _prefix_rewrite(r.match.path, r.rewrite.path)
                act.regex_rewrite.pattern.CopyFrom(_regex(pattern))
                act.regex_rewrite.substitution = sub
        for mir in r.mirrors:
            pol = rc.RouteAction.RequestMirrorPolicy(cluster=mir.backend.cluster)
            pol.runtime_fraction.default_value.CopyFrom(
                percent_pb2.FractionalPercent(
                    numerator=mir.per_million, denominator=percent_pb2.FractionalPercent.MILLION
                )
            )
            act.request_mirror_policies.append(pol)
        if r.timeout_s is not None:
            act.timeout.CopyFrom(_duration(r.timeout_s))
        if r.retry is not None:
            act.retry_policy.CopyFrom(_retry_policy(r.retry))
    if r.cors is not None:
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(_cors_policy(r.cors)))
    if r.request_headers is not None and r.redirect is None:
        out.request_headers_to_add.extend(_header_opts(r.request_headers))
        out.request_headers_to_remove.extend(r.request_headers.remove)
    if r.response_headers is not None:
        out.response_headers_to_add.extend(_header_opts(r.response_headers))
        out.response_headers_to_remove.extend(r.response_headers.remove)
    return out


def _retry_policy(r: Retry) -> rc.RetryPolicy:
    """GEP-1731: ``attempts`` retries on the listed codes; connection failures and resets are retried too
    (the GEP: implementations retry on connection errors when a retry stanza is configured)."""
    on = ["connect-failure", "reset"] + (["retriable-status-codes"] if r.codes else [])
    pol = rc.RetryPolicy(retry_on=",".join(on), retriable_status_codes=r.codes)
    pol.num_retries.value = max(r.attempts, 0)
    if r.backoff_s:
        pol.retry_back_off.base_interval.CopyFrom(_duration(r.backoff_s))
    return pol


def _origin_matcher(origin: str) -> string_pb2.StringMatcher:
    if origin == "*":
        return string_pb2.StringMatcher(safe_regex=_regex(".*"))
    if "*" in origin:
        # ``https://*.example.com``: the wildcard stands for one or more labels, never for ``/`` or ``:``
        pattern = "^" + "[^/:]+".join(re.escape(p) for p in origin.split("*")) + "$"
        return string_pb2.StringMatcher(safe_regex=_regex(pattern))
    return string_pb2.StringMatcher(exact=origin)


def _cors_policy(c: Cors) -> cors_pb2.CorsPolicy:
    pol = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_origin_matcher(o) for o in c.allow_origins],
        allow_methods=",".join(c.allow_methods),
        allow_headers=",".join(c.allow_headers),
        expose_headers=",".join(c.expose_headers),
        max_age=str(c.max_age_s),
    )
    pol.allow_credentials.value = c.allow_credentials
    return pol


def _vhost_order(host: str) -> tuple[int, int, str]:
    if host == "*":
        return (2, 0, host)
    if host.startswith("*"):
        return (1, -len(host), host)
    return (0, 0, host)


def route_configuration(
    table: RouteTable, scheme: str = "http", extra_vhosts: list[rc.VirtualHost] | None = None
) -> route_pb2.RouteConfiguration:
    rc_ = route_pb2.RouteConfiguration(name=table.name, ignore_port_in_host_matching=True)
    for host in sorted(table.vhosts, key=_vhost_order):
        routes = sorted(table.vhosts[host], key=route_sort_key)
        vh = rc.VirtualHost(name=host, domains=[host])
        vh.routes.extend(_envoy_route(r, table.port, scheme) for r in routes)
        rc_.virtual_hosts.append(vh)
    for vh in extra_vhosts or []:
        if all(vh.domains[0] not in v.domains for v in rc_.virtual_hosts):
            rc_.virtual_hosts.append(vh)
    return rc_
