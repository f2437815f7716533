"""The service map from flows (pure): workloads as nodes, observed connections as edges.

Flows are taken as decoded JSON (plain dicts), so the map keeps working when the flow message grows
fields. A flow's endpoint becomes a workload the way Hubble UI names them: the ``app`` (or
``app.kubernetes.io/name``) label in its namespace, else the pod name without the ReplicaSet and pod
suffixes, else the reserved identity (``reserved:host``, ``reserved:world``, ``reserved:ingress`` …).
An edge counts flows by verdict and, for L7 HTTP flows (responses, which Hubble sends server → client
and which therefore count on the client → server edge), requests, errors (5xx, and 403 from a policy)
and latency; ``rate`` is requests (or flows) per second over the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Edge", "Node", "ServiceMap", "build_map", "flow_row", "workload_of"]

_RS_SUFFIX = re.compile(r"^(?P<base>.+?)-[a-f0-9]{8,10}-[a-z0-9]{5}$")
_POD_SUFFIX = re.compile(r"^(?P<base>.+?)-[a-z0-9]{5}$")
_APP_KEYS = ("app", "app.kubernetes.io/name", "k8s-app")


def _m(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _labels(ep: dict[str, Any]) -> dict[str, str]:
    """``["k8s:app=web", "reserved:host"]`` → {"app": "web", "reserved:host": ""}."""
    out: dict[str, str] = {}
    for raw in ep.get("labels") or []:
        if not isinstance(raw, str):
            continue
        src_key, _, value = raw.partition("=")
        key = src_key.split(":", 1)[1] if src_key.startswith("k8s:") else src_key
        out[key] = value
    return out


def workload_of(ep: Any) -> tuple[str, str]:
    """(namespace, workload name) of a flow endpoint."""
    ep = _m(ep)
    ns = str(ep.get("namespace") or "")
    labels = _labels(ep)
    for key in _APP_KEYS:
        if labels.get(key):
            return ns, labels[key]
    pod = str(ep.get("pod_name") or "")
    if pod:
        for rx in (_RS_SUFFIX, _POD_SUFFIX):
            m = rx.match(pod)
            if m:
                return ns, m.group("base")
        return ns, pod
    reserved = sorted(k for k in labels if k.startswith("reserved:"))
    if reserved:
        return "", reserved[0]
    ident = ep.get("identity")
    return ns, f"identity-{ident}" if ident else "unknown"


@dataclass
class Node:
    id: str
    namespace: str
    name: str
    reserved: bool


@dataclass
class Edge:
    source: str
    target: str
    flows: int = 0
    forwarded: int = 0
    dropped: int = 0
    requests: int = 0
    errors: int = 0
    ports: set[str] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)

    def as_json(self, window_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        per = max(window_s, 1.0)
        return {
            "source": self.source,
            "target": self.target,
            "flows": self.flows,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "requests": self.requests,
            "errors": self.errors,
            "error_share": round(self.errors / self.requests, 3) if self.requests else 0.0,
            "rate": round((self.requests or self.flows) / per, 3),
            "latency_p50_ms": q(0.5),
            "latency_p95_ms": q(0.95),
            "ports": sorted(self.ports),
        }


@dataclass
class ServiceMap:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)

    def as_json(self, window_s: float) -> dict[str, Any]:
        return {
            "nodes": [n.__dict__ for n in sorted(self.nodes.values(), key=lambda n: n.id)],
            "edges": [e.as_json(window_s) for _, e in sorted(self.edges.items())],
            "window_s": window_s,
        }


def _node(sm: ServiceMap, ep: Any) -> str:
    ns, name = workload_of(ep)
    nid = f"{ns}/{name}" if ns else name
    if nid not in sm.nodes:
        sm.nodes[nid] = Node(id=nid, namespace=ns, name=name, reserved=name.startswith("reserved:"))
    return nid


def _port(f: dict[str, Any]) -> str:
    l4 = _m(f.get("l4"))
    for proto in ("TCP", "UDP", "SCTP"):
        p = _m(l4.get(proto))
        if p.get("destination_port"):
            return f"{p['destination_port']}/{proto}"
    return ""


def _http(f: dict[str, Any]) -> dict[str, Any]:
    return _m(_m(f.get("l7")).get("http"))


def build_map(flows: list[dict[str, Any]], namespace: str = "", window_s: float = 60.0) -> dict[str, Any]:
    """The map of ``flows`` (optionally only edges touching ``namespace``), as JSON for the page."""
    sm = ServiceMap()
    for f in flows:
        if not isinstance(f, dict):
            continue
        l7 = _m(f.get("l7"))
        response = l7.get("type") == "RESPONSE"
        if f.get("is_reply") and not response:
            continue  # an L3/L4 reply belongs to the connection its request opened
        src, dst = _m(f.get("source")), _m(f.get("destination"))
        if response:
            # Hubble's L7 response flows go server → client: the request's edge is the other way round
            src, dst = dst, src
        if namespace and namespace not in (src.get("namespace"), dst.get("namespace")):
            continue
        s, d = _node(sm, src), _node(sm, dst)
        e = sm.edges.setdefault((s, d), Edge(s, d))
        e.flows += 1
        verdict = str(f.get("verdict") or "")
        if verdict == "DROPPED":
            e.dropped += 1
        elif verdict in ("FORWARDED", "REDIRECTED"):
            e.forwarded += 1
        if port := _port(f):
            e.ports.add(port)
        http = _http(f)
        if http and response:
            e.requests += 1
            code = int(http.get("code") or 0)
            if code >= 500 or code == 403 or verdict == "DROPPED":
                e.errors += 1
            try:
                e.latencies_ms.append(int(l7.get("latency_ns") or 0) / 1e6)
            except (TypeError, ValueError):
                pass
    return sm.as_json(window_s)


def flow_row(f: dict[str, Any]) -> dict[str, Any]:
    """One row of the flows table, with the seed's columns (source, destination, port, L7 info, time,
    direction, verdict)."""
    src, dst = _m(f.get("source")), _m(f.get("destination"))
    sns, sname = workload_of(src)
    dns, dname = workload_of(dst)
    http = _http(f)
    l7 = _m(f.get("l7"))
    info = ""
    if http:
        info = f"{http.get('method', '')} {http.get('url', '')}".strip()
        if http.get("code"):
            try:
                ms = int(l7.get("latency_ns") or 0) / 1e6
            except (TypeError, ValueError):
                ms = 0.0
            info += f" → {http['code']} {ms:.0f}ms"
    return {
        "time": f.get("time", ""),
        "source": f"{sns}/{sname}" if sns else sname,
        "source_pod": src.get("pod_name", ""),
        "destination": f"{dns}/{dname}" if dns else dname,
        "destination_pod": dst.get("pod_name", ""),
        "port": _port(f),
        "l7": info,
        "direction": str(f.get("traffic_direction") or "").lower(),
        "verdict": str(f.get("verdict") or "").lower(),
        "drop_reason": f.get("drop_reason_desc", ""),
        "namespaces": sorted({x for x in (src.get("namespace"), dst.get("namespace")) if x}),
    }
