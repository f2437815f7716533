"""``nodemesh get`` table columns per kind: the status a user looks for first.

Pods show phase, IP and node; Gateways their address and ``Programmed``; routes whether their
parents ``Accepted`` them; Services type, IPs and ports; and so on. Kinds not listed get NAME and
AGE.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nodemesh.kinds import Kind

__all__ = ["age", "table_rows"]

Obj = dict[str, Any]


def age(obj: Obj, now: float | None = None) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "-"
    try:
        created = datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    s = int((now or time.time()) - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{max(s, 0)}s"


def _cond(conditions: Any, ctype: str) -> str:
    for c in conditions or []:
        if isinstance(c, dict) and c.get("type") == ctype:
            return str(c.get("status", "Unknown"))
    return "Unknown"


def _status(obj: Obj) -> Obj:
    s = obj.get("status")
    return s if isinstance(s, dict) else {}


def _spec(obj: Obj) -> Obj:
    s = obj.get("spec")
    return s if isinstance(s, dict) else {}


def _pod(o: Obj) -> list[str]:
    st = _status(o)
    ready = sum(1 for c in st.get("containerStatuses") or [] if c.get("ready"))
    total = len(_spec(o).get("containers") or [])
    return [
        f"{ready}/{total}",
        str(st.get("phase", "Pending")),
        str(st.get("podIP") or "<none>"),
        str(_spec(o).get("nodeName") or "<none>"),
    ]


def _gateway(o: Obj) -> list[str]:
    st = _status(o)
    addrs = ",".join(str(a.get("value", "")) for a in st.get("addresses") or []) or "<pending>"
    return [str(_spec(o).get("gatewayClassName", "")), addrs, _cond(st.get("conditions"), "Programmed")]


def _route(o: Obj) -> list[str]:
    hosts = ",".join(_spec(o).get("hostnames") or []) or "*"
    parents = _status(o).get("parents") or []
    accepted = ",".join(_cond(p.get("conditions"), "Accepted") for p in parents) or "Unknown"
    resolved = ",".join(_cond(p.get("conditions"), "ResolvedRefs") for p in parents) or "Unknown"
    return [hosts, accepted, resolved]


def _service(o: Obj) -> list[str]:
    sp, st = _spec(o), _status(o)
    ext = ",".join(i.get("ip", "") for i in (st.get("loadBalancer") or {}).get("ingress") or []) or "<none>"
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in sp.get("ports") or []) or "<none>"
    return [str(sp.get("type", "ClusterIP")), str(sp.get("clusterIP") or "<none>"), ext, ports]


def _deployment(o: Obj) -> list[str]:
    st = _status(o)
    return [
        f"{st.get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}",
        str(st.get("availableReplicas", 0)),
    ]


def _node(o: Obj) -> list[str]:
    st = _status(o)
    ready = "Ready" if _cond(st.get("conditions"), "Ready") == "True" else "NotReady"
    addrs = ",".join(a.get("address", "") for a in st.get("addresses") or [])
    return [ready, str(_spec(o).get("podCIDR", "")), addrs]


def _slice(o: Obj) -> list[str]:
    ports = ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>"
    eps = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return [str(o.get("addressType", "")), ports, ",".join(eps[:3]) + (" + more" if len(eps) > 3 else "")]


def _gatewayclass(o: Obj) -> list[str]:
    return [str(_spec(o).get("controllerName", "")), _cond(_status(o).get("conditions"), "Accepted")]


def _namespace(o: Obj) -> list[str]:
    return [str(_status(o).get("phase", "Active"))]


def _policy(o: Obj) -> list[str]:
    return [_cond(_status(o).get("conditions"), "Valid")]


_COLUMNS: dict[str, tuple[list[str], Callable[[Obj], list[str]]]] = {
    "Pod": (["READY", "STATUS", "IP", "NODE"], _pod),
    "Gateway": (["CLASS", "ADDRESS", "PROGRAMMED"], _gateway),
    "HTTPRoute": (["HOSTNAMES", "ACCEPTED", "RESOLVED"], _route),
    "GRPCRoute": (["HOSTNAMES", "ACCEPTED", "RESOLVED"], _route),
    "TLSRoute": (["HOSTNAMES", "ACCEPTED", "RESOLVED"], _route),
    "TCPRoute": (["HOSTNAMES", "ACCEPTED", "RESOLVED"], _route),
    "Service": (["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORTS"], _service),
    "Deployment": (["READY", "AVAILABLE"], _deployment),
    "ReplicaSet": (["READY", "AVAILABLE"], _deployment),
    "Node": (["STATUS", "POD-CIDR", "ADDRESSES"], _node),
    "EndpointSlice": (["ADDRESSTYPE", "PORTS", "ENDPOINTS"], _slice),
    "GatewayClass": (["CONTROLLER", "ACCEPTED"], _gatewayclass),
    "Namespace": (["STATUS"], _namespace),
    "CiliumNetworkPolicy": (["VALID"], _policy),
    "CiliumClusterwideNetworkPolicy": (["VALID"], _policy),
}


def table_rows(kind: Kind, items: list[Obj], with_namespace: bool, wide: bool = False) -> list[list[str]]:
    """Header plus one row per object (``wide`` adds nothing yet beyond the default columns)."""
    heads, fn = _COLUMNS.get(kind.kind, ([], lambda _o: []))
    rows = [(["NAMESPACE"] if with_namespace else []) + ["NAME", *heads, "AGE"]]
    now = time.time()
    for o in items:
        meta = o.get("metadata") or {}
        try:
            cells = fn(o)
        except (AttributeError, TypeError):  # a malformed status never breaks `get`
            cells = ["?"] * len(heads)
        rows.append(
            ([str(meta.get("namespace", ""))] if with_namespace else [])
            + [meta.get("name", ""), *cells, age(o, now)]
        )
    return rows
