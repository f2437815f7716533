"""Expectations of the corpus: HTTP round trips (README §3) and status checks (README §4)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

from .client import GrpcResult, Response

__all__ = ["compare_grpc", "compare_http", "status_check"]


def _statuses(v: Any) -> list[int]:
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]


def _joined(values: list[str]) -> str:
    return ",".join(values)


def compare_http(resp: Response, expect: dict[str, Any], request: dict[str, Any]) -> str:
    """ "" when the response meets ``expect``, else why not."""
    if expect.get("connection_fails"):
        # The gateway must refuse the connection itself (TLS handshake, client certificate): no response.
        if resp.error:
            return ""
        return f"got a response (status {resp.status}), want the connection refused"
    if resp.error:
        return resp.error
    want = _statuses(expect.get("status", 200))
    if resp.status not in want:
        return f"status {resp.status}, want {want}"
    if resp.status in (301, 302, 303, 307, 308) and expect.get("redirect_location"):
        err = _redirect(resp, expect["redirect_location"])
        if err:
            return err
    if "websocket_message" in expect and resp.body != str(expect["websocket_message"]).encode():
        return f"websocket echoed {resp.body!r}, want {expect['websocket_message']!r}"
    if resp.status not in (200, 204):
        return ""
    backend = expect.get("backend")
    seen = expect.get("request_seen_by_backend")
    needs_body = backend is not None or seen is not None
    if needs_body:
        ctypes = resp.header("Content-Type")
        if ctypes != ["application/json"]:
            return f"Content-Type {ctypes}, want application/json"
        body = resp.json()
        if body is None:
            return "body is not the echo JSON"
        if backend:
            ns, _, prefix = str(backend).partition("/")
            if body.get("namespace") != ns:
                return f"namespace {body.get('namespace')!r}, want {ns!r}"
            if prefix != "*" and not str(body.get("pod", "")).startswith(prefix):
                return f"pod {body.get('pod')!r}, want prefix {prefix!r}"
        if seen:
            err = _seen(body, seen, request)
            if err:
                return err
    for name, value in (expect.get("response_headers") or {}).items():
        got = resp.header(name)
        if not got:
            return f"response header {name} missing"
        if _joined(got) != str(value):
            return f"response header {name}={_joined(got)!r}, want {value!r}"
    for name in expect.get("response_absent_headers") or []:
        if resp.header(name):
            return f"response header {name} should be absent"
    return ""


def _seen(body: dict[str, Any], seen: dict[str, Any], request: dict[str, Any]) -> str:
    if seen.get("method") and body.get("method") != seen["method"]:
        return f"backend saw method {body.get('method')!r}, want {seen['method']!r}"
    if seen.get("path") is not None and body.get("path") != seen["path"]:
        return f"backend saw path {body.get('path')!r}, want {seen['path']!r}"
    if seen.get("host") is not None and body.get("host") != seen["host"]:
        return f"backend saw host {body.get('host')!r}, want {seen['host']!r}"
    got = {k.lower(): v for k, v in (body.get("headers") or {}).items()}
    for name, value in (seen.get("headers") or {}).items():
        vals = got.get(name.lower())
        if vals is None:
            return f"backend did not see header {name}"
        if _joined(vals) != str(value):
            return f"backend saw {name}={_joined(vals)!r}, want {value!r}"
    for name in seen.get("absent_headers") or []:
        if name.lower() in got:
            return f"backend saw header {name}, which should be absent"
    return ""


def _redirect(resp: Response, want: dict[str, Any]) -> str:
    loc = resp.header("Location")
    if not loc:
        return "redirect without Location"
    u = urlsplit(urljoin(resp.url, loc[0]))
    if want.get("scheme") and u.scheme != want["scheme"]:
        return f"redirect scheme {u.scheme!r}, want {want['scheme']!r} ({loc[0]})"
    if want.get("host") is not None and u.hostname != want["host"]:
        return f"redirect host {u.hostname!r}, want {want['host']!r} ({loc[0]})"
    if want.get("path") is not None and u.path != want["path"]:
        return f"redirect path {u.path!r}, want {want['path']!r} ({loc[0]})"
    port = None if u.port is None else str(u.port)
    if want.get("port") is not None:
        if port != str(want["port"]):
            return f"redirect port {port!r}, want {want['port']!r} ({loc[0]})"
    else:
        ok = {"http": (None, "80"), "https": (None, "443")}.get(u.scheme, (None,))
        if port not in ok:
            return f"redirect port {port!r}, want none or the scheme's default ({loc[0]})"
    return ""


def compare_grpc(res: GrpcResult, expect: dict[str, Any], rpc: str) -> str:
    if res.code != expect.get("grpc_status", "OK"):
        return f"gRPC status {res.code} ({res.error}), want {expect.get('grpc_status')}"
    if res.code != "OK":
        return ""
    a = res.response.get("assertions") or {}
    if expect.get("fully_qualified_method_seen_by_backend", rpc) and a.get("fullyQualifiedMethod") != rpc:
        return f"backend saw method {a.get('fullyQualifiedMethod')!r}, want {rpc!r}"
    backend = expect.get("backend")
    if backend:
        ns, _, prefix = str(backend).partition("/")
        ctx = a.get("context") or {}
        if ctx.get("namespace") != ns:
            return f"namespace {ctx.get('namespace')!r}, want {ns!r}"
        if prefix != "*" and not str(ctx.get("pod", "")).startswith(prefix):
            return f"pod {ctx.get('pod')!r}, want prefix {prefix!r}"
    return ""


# --- status (README §4) ----------------------------------------------------------------------------


def _has(conds: list[dict[str, Any]], want: dict[str, Any]) -> bool:
    for c in conds or []:
        if c.get("type") == want.get("type") and c.get("status") == want.get("status"):
            if want.get("reason") in (None, c.get("reason")):
                return True
    return False


def _gen_ok(obj: dict[str, Any], conds: list[dict[str, Any]]) -> bool:
    gen = (obj.get("metadata") or {}).get("generation")
    return all(c.get("observedGeneration") == gen for c in conds or [])


def _split(ref: str) -> tuple[str, str]:
    ns, _, name = ref.partition("/")
    return ns, name


def status_check(c: Any, chk: dict[str, Any], controller: str) -> str:
    """ "" when the check holds on cluster ``c`` now, else why not (the caller polls)."""
    kind = chk.get("check")
    if kind == "namespaces_ready":
        for ns in chk.get("namespaces") or []:
            for gw in c.list_objects("Gateway", ns):
                if ((gw.get("metadata") or {}).get("annotations") or {}).get(
                    "gateway-api/skip-this-for-readiness"
                ):
                    continue
                conds = (gw.get("status") or {}).get("conditions") or []
                for t in ("Accepted", "Programmed"):
                    if not _has(conds, {"type": t, "status": "True"}) or not _gen_ok(gw, conds):
                        return f"Gateway {ns}/{gw['metadata']['name']} not {t}"
            if not c.pods_ready(ns):
                return f"pods in {ns} not ready"
        return ""
    if kind in (
        "route_parent_accepted",
        "route_parents_include",
        "route_condition",
        "route_no_accepted_parents",
    ):
        gns, gname = _split(chk.get("gateway", ""))
        return _route(c, chk, kind, gns, gname, controller)
    if "gateway" in chk:
        gns, gname = _split(chk["gateway"])
        gw = c.get("Gateway", gns, gname)
        if gw is None:
            return f"Gateway {chk['gateway']} not found"
        st = gw.get("status") or {}
        conds = st.get("conditions") or []
        if kind == "gateway_has_address":
            if not any(a.get("type") for a in st.get("addresses") or []):
                return "no address"
            return "" if _gen_ok(gw, conds) else "stale observedGeneration"
        if kind in ("gateway_latest_observed_generation",):
            return "" if conds and _gen_ok(gw, conds) else "stale observedGeneration"
        if kind == "gateway_condition":
            if not _has(conds, chk["condition"]):
                return f"no condition {chk['condition']} in {conds}"
            return "" if _gen_ok(gw, conds) else "stale observedGeneration"
        if kind == "gateway_zero_attached_routes":
            ls = st.get("listeners") or []
            if not _gen_ok(gw, conds):
                return "stale observedGeneration"
            if not ls or (len(ls) == 1 and ls[0].get("attachedRoutes") == 0):
                return ""
            return f"listeners {ls}"
        if kind in ("gateway_listeners_exact", "gateway_listeners_have_conditions"):
            return _listeners(gw, chk, kind == "gateway_listeners_exact")
    if kind == "generation_changed":
        return ""
    return f"unknown check {kind}"


def _listeners(gw: dict[str, Any], chk: dict[str, Any], exact: bool) -> str:
    st = gw.get("status") or {}
    got = {x.get("name"): x for x in st.get("listeners") or []}
    want = chk.get("listeners") or []
    if not exact:
        if not got:
            return "no listeners in status"
        for t in got.values():
            for cond in chk.get("conditions") or []:
                if not _has(t.get("conditions") or [], cond):
                    return f"listener {t.get('name')} lacks {cond}: {t.get('conditions')}"
        return ""
    if exact and len(got) != len(want):
        return f"{len(got)} listeners in status, want {len(want)}"
    for w in want:
        g = got.get(w.get("name")) if exact else None
        targets = [g] if exact else list(got.values())
        for t in targets:
            if t is None:
                return f"listener {w.get('name')} missing"
            if exact and "attachedRoutes" in w and t.get("attachedRoutes") != w["attachedRoutes"]:
                got_n, want_n = t.get("attachedRoutes"), w["attachedRoutes"]
                return f"listener {w.get('name')} attachedRoutes {got_n}, want {want_n}"
            kinds = {f"{k.get('group')}/{k.get('kind')}" for k in t.get("supportedKinds") or []}
            if w.get("supportedKinds_must_be_empty") and kinds:
                return f"listener {w.get('name')} supportedKinds {kinds}, want none"
            for k in w.get("supportedKinds") or []:
                if k not in kinds:
                    return f"listener {w.get('name')} lacks supportedKind {k}"
            for cond in w.get("conditions") or chk.get("conditions") or []:
                if not _has(t.get("conditions") or [], cond):
                    return f"listener {t.get('name')} lacks {cond}: {t.get('conditions')}"
    if exact and not _gen_ok(gw, st.get("conditions") or []):
        return "stale observedGeneration"
    return ""


def _route(c: Any, chk: dict[str, Any], kind: str, gns: str, gname: str, controller: str) -> str:
    rns, rname = _split(chk.get("route", ""))
    rkind = chk.get("kind", "HTTPRoute")
    route = c.get(rkind, rns, rname)
    if route is None:
        return f"{rkind} {chk.get('route')} not found"
    gen = (route.get("metadata") or {}).get("generation")
    parents = (route.get("status") or {}).get("parents") or []
    if kind == "route_no_accepted_parents":
        if not parents:
            return ""
        if len(parents) == 1:
            conds = parents[0].get("conditions") or []
            if _has(conds, {"type": "Accepted", "status": "False"}) and all(
                x.get("observedGeneration") == gen for x in conds
            ):
                return ""
        return f"parents {parents}"
    if kind == "route_parents_include":
        return _parents_include(parents, chk, gen, rkind)
    check_gen = rkind in ("HTTPRoute", "GRPCRoute") or kind == "route_condition"
    if check_gen and kind == "route_condition":
        for p in parents:
            if any(x.get("observedGeneration") != gen for x in p.get("conditions") or []):
                return "stale observedGeneration on route parent"
    for p in parents:
        ref = p.get("parentRef") or {}
        if ref.get("name") != gname:
            continue
        if kind == "route_condition":
            if ref.get("namespace") not in (None, gns):
                continue
            if _has(p.get("conditions") or [], chk["condition"]):
                return ""
            continue
        if p.get("controllerName") != controller:
            continue
        if (
            ref.get("group", "gateway.networking.k8s.io") != "gateway.networking.k8s.io"
            or ref.get("kind", "Gateway") != "Gateway"
        ):
            continue
        if ref.get("namespace") != gns and (
            chk.get("parent_namespace_required", True) or ref.get("namespace") is not None
        ):
            continue
        conds = p.get("conditions") or []
        if rkind in ("HTTPRoute", "GRPCRoute") and any(x.get("observedGeneration") != gen for x in conds):
            continue
        wanted = [chk.get("condition") or {"type": "Accepted", "status": "True", "reason": "Accepted"}]
        if all(_has(conds, w) for w in wanted):
            return ""
    return f"no matching parent status for {gns}/{gname}: {parents}"


def _parents_include(parents: list[dict[str, Any]], chk: dict[str, Any], gen: Any, rkind: str) -> str:
    for exp in chk.get("expected_parents") or []:
        eref = exp.get("parentRef") or {}
        found = False
        for p in parents:
            ref = p.get("parentRef") or {}
            if p.get("controllerName") != exp.get("controllerName") or ref.get("name") != eref.get("name"):
                continue
            if ref.get("group", "gateway.networking.k8s.io") != eref.get(
                "group", "gateway.networking.k8s.io"
            ):
                continue
            if ref.get("kind", "Gateway") != eref.get("kind", "Gateway"):
                continue
            if ref.get("namespace") != eref.get("namespace") and (
                chk.get("parent_namespace_required", True) or ref.get("namespace") is not None
            ):
                continue
            conds = p.get("conditions") or []
            if rkind in ("HTTPRoute", "GRPCRoute") and any(x.get("observedGeneration") != gen for x in conds):
                continue
            if all(_has(conds, w) for w in exp.get("conditions") or []):
                found = True
                break
        if not found:
            return f"no parent like {exp} in {parents}"
    return ""
