"""``nodemesh describe``: one object as ``kubectl describe`` lays it out (pure: object in, text out).

Common header (name, namespace, labels, annotations, created), then what the kind's users look for:
a Pod's node, IP, phase, containers and conditions and the Services selecting it; a Service's type,
addresses, ports and endpoints (from its EndpointSlices, with their readiness); a Gateway's class,
addresses and listeners with attached routes and conditions; a route's parents with their conditions;
a policy's selectors and rules. Every kind ends with its status conditions — the local API server
records no Events, so conditions are what explains an object's state.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["describe"]

Obj = dict[str, Any]


def _m(v: Any) -> Obj:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _kv(d: Any) -> str:
    items = sorted(_m(d).items())
    return ",".join(f"{k}={v}" for k, v in items) if items else "<none>"


def _line(out: list[str], key: str, value: Any, indent: int = 0) -> None:
    out.append(f"{' ' * indent}{key + ':':<{max(18 - indent, len(key) + 2)}}{value}")


def _conditions(out: list[str], conds: Any, indent: int = 0, title: str = "Conditions") -> None:
    conds = [c for c in _l(conds) if isinstance(c, dict)]
    out.append(f"{' ' * indent}{title}:")
    if not conds:
        out.append(f"{' ' * indent}  <none>")
        return
    rows = [["Type", "Status", "Reason", "ObservedGeneration", "Message"]]
    rows += [
        [
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "")),
            str(c.get("observedGeneration", "-")),
            str(c.get("message", "")),
        ]
        for c in conds
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        out.append(
            " " * (indent + 2) + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        )


def _selects(selector: Any, labels: Any) -> bool:
    sel, lab = _m(selector), _m(labels)
    return bool(sel) and all(lab.get(k) == v for k, v in sel.items())


def _pod(o: Obj, out: list[str], related: dict[str, list[Obj]]) -> None:
    spec, st = _m(o.get("spec")), _m(o.get("status"))
    _line(out, "Node", spec.get("nodeName") or "<none>")
    _line(out, "Status", st.get("phase", "Unknown"))
    _line(out, "IP", st.get("podIP") or "<none>")
    svcs = [
        s["metadata"]["name"]
        for s in related.get("Service", [])
        if _selects(_m(s.get("spec")).get("selector"), _m(o.get("metadata")).get("labels"))
    ]
    _line(out, "Services", ", ".join(sorted(svcs)) or "<none>")
    out.append("Containers:")
    statuses = {c.get("name"): c for c in _l(st.get("containerStatuses")) if isinstance(c, dict)}
    for c in _l(spec.get("containers")):
        c = _m(c)
        out.append(f"  {c.get('name', '?')}:")
        _line(out, "Image", c.get("image", ""), 4)
        if c.get("command"):
            _line(out, "Command", " ".join(str(x) for x in _l(c.get("command"))), 4)
        ports = ", ".join(
            f"{_m(p).get('containerPort')}/{_m(p).get('protocol', 'TCP')}" for p in _l(c.get("ports"))
        )
        _line(out, "Ports", ports or "<none>", 4)
        cs = _m(statuses.get(c.get("name")))
        state = next(iter(_m(cs.get("state"))), "unknown")
        _line(out, "State", state, 4)
        _line(out, "Ready", cs.get("ready", False), 4)
        _line(out, "Restart Count", cs.get("restartCount", 0), 4)


def _service(o: Obj, out: list[str], related: dict[str, list[Obj]]) -> None:
    spec = _m(o.get("spec"))
    name = _m(o.get("metadata")).get("name")
    _line(out, "Type", spec.get("type", "ClusterIP"))
    _line(out, "Selector", _kv(spec.get("selector")))
    _line(out, "IPs", ",".join(_l(spec.get("clusterIPs"))) or spec.get("clusterIP") or "<none>")
    lb = [
        i.get("ip")
        for i in _l(_m(_m(o.get("status")).get("loadBalancer")).get("ingress"))
        if isinstance(i, dict)
    ]
    if lb:
        _line(out, "LoadBalancer", ",".join(str(x) for x in lb))
    if spec.get("sessionAffinity"):
        _line(out, "Session Affinity", spec["sessionAffinity"])
    for p in _l(spec.get("ports")):
        p = _m(p)
        _line(out, "Port", f"{p.get('name') or '<unset>'}  {p.get('port')}/{p.get('protocol', 'TCP')}")
        _line(out, "TargetPort", p.get("targetPort", p.get("port")))
        if p.get("nodePort"):
            _line(out, "NodePort", p["nodePort"])
    eps = []
    for sl in related.get("EndpointSlice", []):
        if _m(_m(sl.get("metadata")).get("labels")).get("kubernetes.io/service-name") != name:
            continue
        ports = [str(_m(p).get("port")) for p in _l(sl.get("ports"))]
        for ep in _l(sl.get("endpoints")):
            ep = _m(ep)
            ready = _m(ep.get("conditions")).get("ready", True)
            for a in _l(ep.get("addresses")):
                for port in ports or [""]:
                    eps.append(f"{a}:{port}" + ("" if ready else " (not ready)"))
    _line(out, "Endpoints", ", ".join(eps) or "<none>")


def _gateway(o: Obj, out: list[str], _related: dict[str, list[Obj]]) -> None:
    spec, st = _m(o.get("spec")), _m(o.get("status"))
    _line(out, "GatewayClass", spec.get("gatewayClassName", ""))
    addrs = [str(_m(a).get("value")) for a in _l(st.get("addresses"))]
    _line(out, "Addresses", ", ".join(addrs) or "<none>")
    status_by_name = {_m(x).get("name"): _m(x) for x in _l(st.get("listeners"))}
    out.append("Listeners:")
    for li in _l(spec.get("listeners")):
        li = _m(li)
        ls = status_by_name.get(li.get("name"), {})
        host = f" {li['hostname']}" if li.get("hostname") else ""
        out.append(f"  {li.get('name')}: {li.get('protocol')} :{li.get('port')}{host}")
        _line(out, "Attached Routes", ls.get("attachedRoutes", 0), 4)
        _conditions(out, ls.get("conditions"), 4)
    _conditions(out, st.get("conditions"))


def _route(o: Obj, out: list[str], _related: dict[str, list[Obj]]) -> None:
    spec, st = _m(o.get("spec")), _m(o.get("status"))
    _line(out, "Hostnames", ", ".join(str(h) for h in _l(spec.get("hostnames"))) or "<any>")
    _line(out, "Rules", len(_l(spec.get("rules"))))
    out.append("Parents:")
    parents = _l(st.get("parents"))
    if not parents:
        out.append("  <none>")
    for p in parents:
        p = _m(p)
        ref = _m(p.get("parentRef"))
        where = f"{ref.get('namespace', '')}/{ref.get('name', '')}".lstrip("/")
        section = f" section {ref['sectionName']}" if ref.get("sectionName") else ""
        out.append(f"  {ref.get('kind', 'Gateway')} {where}{section} ({p.get('controllerName', '')})")
        _conditions(out, p.get("conditions"), 4)


def _policy(o: Obj, out: list[str], _related: dict[str, list[Obj]]) -> None:
    spec = _m(o.get("spec"))
    shown = {k: spec[k] for k in sorted(spec)}
    out.append("Spec:")
    out += ["  " + line for line in yaml.safe_dump(shown, sort_keys=False).splitlines()]


_BY_KIND = {
    "Pod": _pod,
    "Service": _service,
    "Gateway": _gateway,
    "HTTPRoute": _route,
    "GRPCRoute": _route,
    "TLSRoute": _route,
    "TCPRoute": _route,
    "UDPRoute": _route,
    "CiliumNetworkPolicy": _policy,
    "CiliumClusterwideNetworkPolicy": _policy,
    "NetworkPolicy": _policy,
}


def describe(obj: Obj, related: dict[str, list[Obj]] | None = None) -> str:
    """The text ``nodemesh describe`` prints for ``obj`` (``related``: objects some kinds refer to)."""
    meta = _m(obj.get("metadata"))
    out: list[str] = []
    _line(out, "Name", meta.get("name", ""))
    if meta.get("namespace"):
        _line(out, "Namespace", meta["namespace"])
    _line(out, "Kind", obj.get("kind", ""))
    _line(out, "Labels", _kv(meta.get("labels")))
    _line(out, "Annotations", _kv(meta.get("annotations")))
    _line(out, "Created", meta.get("creationTimestamp", ""))
    if meta.get("generation") is not None:
        _line(out, "Generation", meta["generation"])
    fn = _BY_KIND.get(str(obj.get("kind")))
    if fn is not None:
        try:
            fn(obj, out, related or {})
        except (AttributeError, TypeError, KeyError) as e:  # a malformed object still describes
            out.append(f"(cannot show the {obj.get('kind')} details: {e!r})")
    if str(obj.get("kind")) not in ("Gateway",) and "conditions" in _m(obj.get("status")):
        _conditions(out, _m(obj.get("status")).get("conditions"))
    elif fn is None:
        _conditions(out, [])
    return "\n".join(out) + "\n"
