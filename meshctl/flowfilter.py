"""Hubble-style flow filters over :class:`nodemesh.messages.flow.Flow` (pure, no I/O).

Semantics follow Hubble's ``FlowFilter`` (observer.proto): inside one filter every set field must
match (AND) and the values of one field are alternatives (OR); a flow is shown if it matches any
allow filter (or there are none) and no deny filter. :func:`build_filters` turns ``hubble observe``
style flags into filters the way the Hubble CLI does: ``--from-X``/``--to-X`` constrain one side,
and an either-side flag (``--ip``, ``--pod``, ``--namespace``, ``--label``, ``--identity``,
``--port``, ``--service``) yields two filters, one with the source side and one with the destination side.

Values: pod ``ns/prefix``, ``ns/`` (whole namespace) or a bare pod-name prefix (any namespace);
service the same, over the flow's ``source_service``/``destination_service`` (Hubble's
``--from-service``/``--to-service``);
label ``key=value``, ``key!=value``, ``key`` or ``!key``, comma-separated terms ANDed, ``k8s:``
optional; identity a number or reserved name (``world``); ip an address or CIDR; protocol
tcp/udp/icmp/sctp; verdict FORWARDED/DROPPED/…; type drop (1), trace (4), policy-verdict (5), l7;
workload ``name`` or ``Kind/name`` (the flow's ``workloads``); node name a glob (``node-*``, an
optional ``cluster/`` before it); HTTP status ``404`` or a prefix ``4+``/``50+``, HTTP method
(any case), HTTP path a regular expression searched in the URL's path (Hubble's ``--http-path``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from nodemesh.labels import RESERVED_IDS
from nodemesh.messages.flow import Endpoint, Flow, Service
from nodemesh.workload import pod_workload

__all__ = [
    "EVENT_TYPES",
    "FilterError",
    "FlowFilter",
    "build_filters",
    "flow_matches",
    "matches",
    "parse_identity",
]

#: Hubble/Cilium monitor event types by ``--type`` name.
EVENT_TYPES = {"drop": 1, "trace": 4, "policy-verdict": 5, "l7": 129}
_PROTOCOLS = ("tcp", "udp", "icmp", "sctp")
_VERDICTS = ("FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED")


class FilterError(ValueError):
    """A filter value that cannot be parsed; the message names the flag and the value."""


class FlowFilter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One Hubble FlowFilter: set fields are ANDed; the values of a field are ORed."""

    source_pod: list[str] = msgspec.field(default_factory=list)
    destination_pod: list[str] = msgspec.field(default_factory=list)
    source_service: list[str] = msgspec.field(default_factory=list)
    destination_service: list[str] = msgspec.field(default_factory=list)
    source_label: list[str] = msgspec.field(default_factory=list)
    destination_label: list[str] = msgspec.field(default_factory=list)
    source_identity: list[int] = msgspec.field(default_factory=list)
    destination_identity: list[int] = msgspec.field(default_factory=list)
    source_ip: list[str] = msgspec.field(default_factory=list)
    destination_ip: list[str] = msgspec.field(default_factory=list)
    source_port: list[int] = msgspec.field(default_factory=list)
    destination_port: list[int] = msgspec.field(default_factory=list)
    verdict: list[str] = msgspec.field(default_factory=list)
    protocol: list[str] = msgspec.field(default_factory=list)
    event_type: list[str] = msgspec.field(default_factory=list)
    traffic_direction: list[str] = msgspec.field(default_factory=list)
    node_name: list[str] = msgspec.field(default_factory=list)
    drop_reason_desc: list[str] = msgspec.field(default_factory=list)
    source_workload: list[str] = msgspec.field(default_factory=list)
    destination_workload: list[str] = msgspec.field(default_factory=list)
    http_status_code: list[str] = msgspec.field(default_factory=list)
    http_method: list[str] = msgspec.field(default_factory=list)
    http_path: list[str] = msgspec.field(default_factory=list)


# --- matching -------------------------------------------------------------------------------------
def _name_match(namespace: str, name: str, patterns: list[str]) -> bool:
    for p in patterns:
        ns, sep, prefix = p.partition("/")
        if sep and namespace == ns and name.startswith(prefix):
            return True  # "ns/" is the whole namespace, "ns/pre" a name prefix in it
        if not sep and name and name.startswith(p):
            return True  # a bare prefix matches in any namespace
    return False


def _pod_match(ep: Endpoint | None, patterns: list[str]) -> bool:
    return ep is not None and _name_match(ep.namespace, ep.pod_name, patterns)


def _service_match(svc: Service | None, patterns: list[str]) -> bool:
    return svc is not None and bool(svc.name) and _name_match(svc.namespace, svc.name, patterns)


def _parse_labels(labels: Iterable[str]) -> list[tuple[str, str, str]]:
    out = []
    for lab in labels:
        src, sep, rest = lab.partition(":")
        if not sep or any(c in src for c in "./="):
            src, rest = "any", lab
        key, _, value = rest.partition("=")
        out.append((src, key, value))
    return out


def _term_match(term: str, labels: list[tuple[str, str, str]]) -> bool:
    term = term.strip()
    neg = term.startswith("!")
    if neg:
        term = term[1:]
    op = "!=" if "!=" in term else "=" if "=" in term else ""
    key, value = term.split(op, 1) if op else (term, "")
    src, sep, k = key.partition(":")
    if not sep or any(c in src for c in "./="):
        src, k = "any", key
    values = [v for s, lk, v in labels if lk == k and (src == "any" or s == src)]
    if op == "=":
        return value in values
    if op == "!=":
        return value not in values
    return bool(values) != neg


def _label_match(ep: Endpoint | None, selectors: list[str]) -> bool:
    if ep is None:
        return False
    labels = _parse_labels(ep.labels)
    return any(all(_term_match(t, labels) for t in sel.split(",") if t.strip()) for sel in selectors)


def _ip_match(ip: str, patterns: list[str]) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for p in patterns:
        try:
            if addr in ipaddress.ip_network(p, strict=False):
                return True
        except ValueError:
            continue
    return False


def _ports(flow: Flow) -> tuple[int, int] | None:
    l4 = flow.l4
    if l4 is None:
        return None
    for part in (l4.tcp, l4.udp, l4.sctp):
        if part is not None:
            return (part.source_port, part.destination_port)
    return None


def _protocol(flow: Flow) -> str:
    l4 = flow.l4
    if l4 is None:
        return ""
    if l4.tcp is not None:
        return "tcp"
    if l4.udp is not None:
        return "udp"
    if l4.icmpv4 is not None:
        return "icmp"
    if l4.sctp is not None:
        return "sctp"
    return ""


def _event_match(flow: Flow, types: list[str]) -> bool:
    t = flow.event_type.get("type", 0)
    for want in types:
        if want == "l7" and (flow.Type == "L7" or t == EVENT_TYPES["l7"]):
            return True
        if want.isdigit() and int(want) == t:
            return True
        if EVENT_TYPES.get(want) == t:
            return True
    return False


def _workload_match(ep: Endpoint | None, patterns: list[str]) -> bool:
    if ep is None:
        return False
    workloads = list(ep.workloads)
    if not workloads:
        w = pod_workload(ep.pod_name)
        workloads = [w] if w is not None else []
    for p in patterns:
        kind, sep, name = p.rpartition("/")
        for w in workloads:
            if w.name == name and (not sep or w.kind.lower() == kind.lower()):
                return True
    return False


def _node_match(node: str, patterns: list[str]) -> bool:
    for p in patterns:
        _cluster, _, pattern = p.rpartition("/")
        if not pattern or fnmatch.fnmatchcase(node, pattern):
            return True  # "cluster/" alone is every node of the (one) cluster
    return False


def _http_status_match(flow: Flow, patterns: list[str]) -> bool:
    code = flow.l7.http.code if flow.l7 is not None and flow.l7.http is not None else 0
    if not code:
        return False
    text = str(code)
    return any(text.startswith(p[:-1]) if p.endswith("+") else text == p for p in patterns)


def _http_method_match(flow: Flow, methods: list[str]) -> bool:
    http = flow.l7.http if flow.l7 is not None else None
    return http is not None and http.method.upper() in methods


def _http_path_match(flow: Flow, patterns: list[str]) -> bool:
    http = flow.l7.http if flow.l7 is not None else None
    if http is None:
        return False
    path = urlsplit(http.url).path
    return any(re.search(p, path) for p in patterns)


def flow_matches(flow: Flow, f: FlowFilter) -> bool:
    """True if ``flow`` matches every field set in ``f``."""
    src, dst = flow.source, flow.destination
    ip = flow.ip
    ports = _ports(flow)
    checks: list[tuple[list[Any], Any]] = [
        (f.source_pod, lambda: _pod_match(src, f.source_pod)),
        (f.destination_pod, lambda: _pod_match(dst, f.destination_pod)),
        (f.source_service, lambda: _service_match(flow.source_service, f.source_service)),
        (f.destination_service, lambda: _service_match(flow.destination_service, f.destination_service)),
        (f.source_label, lambda: _label_match(src, f.source_label)),
        (f.destination_label, lambda: _label_match(dst, f.destination_label)),
        (f.source_identity, lambda: src is not None and src.identity in f.source_identity),
        (f.destination_identity, lambda: dst is not None and dst.identity in f.destination_identity),
        (f.source_ip, lambda: ip is not None and _ip_match(ip.source, f.source_ip)),
        (f.destination_ip, lambda: ip is not None and _ip_match(ip.destination, f.destination_ip)),
        (f.source_port, lambda: ports is not None and ports[0] in f.source_port),
        (f.destination_port, lambda: ports is not None and ports[1] in f.destination_port),
        (f.verdict, lambda: flow.verdict.upper() in f.verdict),
        (f.protocol, lambda: _protocol(flow) in f.protocol),
        (f.event_type, lambda: _event_match(flow, f.event_type)),
        (f.traffic_direction, lambda: flow.traffic_direction.upper() in f.traffic_direction),
        (f.node_name, lambda: _node_match(flow.node_name, f.node_name)),
        (f.drop_reason_desc, lambda: flow.drop_reason_desc.upper() in f.drop_reason_desc),
        (f.source_workload, lambda: _workload_match(src, f.source_workload)),
        (f.destination_workload, lambda: _workload_match(dst, f.destination_workload)),
        (f.http_status_code, lambda: _http_status_match(flow, f.http_status_code)),
        (f.http_method, lambda: _http_method_match(flow, f.http_method)),
        (f.http_path, lambda: _http_path_match(flow, f.http_path)),
    ]
    return all(check() for values, check in checks if values)


def matches(flow: Flow, allow: Sequence[FlowFilter], deny: Sequence[FlowFilter] = ()) -> bool:
    """Hubble's whitelist/blacklist: any allow filter (or none given) and no deny filter."""
    if allow and not any(flow_matches(flow, f) for f in allow):
        return False
    return not any(flow_matches(flow, f) for f in deny)


# --- building filters from CLI flags --------------------------------------------------------------
def parse_identity(value: str) -> int:
    v = value.strip().lower().removeprefix("reserved:")
    if v in RESERVED_IDS:
        return RESERVED_IDS[v]
    if v.isdigit():
        return int(v)
    raise FilterError(f"identity {value!r} is not a number or a reserved identity name")


def _port(value: str) -> int:
    if value.isdigit() and 0 <= int(value) <= 65535:
        return int(value)
    raise FilterError(f"port {value!r} is not a port number")


def _ip(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise FilterError(f"ip {value!r} is not an address or CIDR") from e
    return value


_STATUS = re.compile(r"^[1-5][0-9]{0,2}\+?$")


def _status(value: str) -> str:
    v = value.strip()
    if _STATUS.match(v) and (v.endswith("+") or len(v) == 3):
        return v
    raise FilterError(f"http status {value!r} is not a code (404) or a prefix (4+, 50+)")


def _path(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise FilterError(f"http path {value!r} is not a regular expression: {e}") from e
    return value


def _workload(value: str) -> str:
    kind, sep, name = value.strip().rpartition("/")
    if not name or (sep and not kind):
        raise FilterError(f"workload {value!r} is not NAME or KIND/NAME")
    return value.strip()


def build_filters(
    *,
    from_pod: Sequence[str] = (),
    to_pod: Sequence[str] = (),
    pod: Sequence[str] = (),
    from_service: Sequence[str] = (),
    to_service: Sequence[str] = (),
    service: Sequence[str] = (),
    namespace: Sequence[str] = (),
    from_label: Sequence[str] = (),
    to_label: Sequence[str] = (),
    label: Sequence[str] = (),
    from_identity: Sequence[str] = (),
    to_identity: Sequence[str] = (),
    identity: Sequence[str] = (),
    from_ip: Sequence[str] = (),
    to_ip: Sequence[str] = (),
    ip: Sequence[str] = (),
    from_port: Sequence[str] = (),
    to_port: Sequence[str] = (),
    port: Sequence[str] = (),
    verdict: Sequence[str] = (),
    protocol: Sequence[str] = (),
    types: Sequence[str] = (),
    traffic_direction: Sequence[str] = (),
    node: Sequence[str] = (),
    from_namespace: Sequence[str] = (),
    to_namespace: Sequence[str] = (),
    from_workload: Sequence[str] = (),
    to_workload: Sequence[str] = (),
    workload: Sequence[str] = (),
    http_status: Sequence[str] = (),
    http_method: Sequence[str] = (),
    http_path: Sequence[str] = (),
) -> list[FlowFilter]:
    """Allow filters for CLI flags (empty list = everything). Raises :class:`FilterError`."""
    left, right = FlowFilter(), FlowFilter()
    either = False

    def both(field: str, values: Iterable[Any]) -> None:
        getattr(left, field).extend(values)
        getattr(right, field).extend(values)

    def split(src_field: str, dst_field: str, values: list[Any]) -> None:
        nonlocal either
        if values:
            either = True
            getattr(left, src_field).extend(values)
            getattr(right, dst_field).extend(values)

    both("source_pod", from_pod)
    both("destination_pod", to_pod)
    split("source_pod", "destination_pod", [*pod, *(n.rstrip("/") + "/" for n in namespace)])
    both("source_service", from_service)
    both("destination_service", to_service)
    split("source_service", "destination_service", list(service))
    both("source_label", from_label)
    both("destination_label", to_label)
    split("source_label", "destination_label", list(label))
    both("source_identity", [parse_identity(v) for v in from_identity])
    both("destination_identity", [parse_identity(v) for v in to_identity])
    split("source_identity", "destination_identity", [parse_identity(v) for v in identity])
    both("source_ip", [_ip(v) for v in from_ip])
    both("destination_ip", [_ip(v) for v in to_ip])
    split("source_ip", "destination_ip", [_ip(v) for v in ip])
    both("source_port", [_port(v) for v in from_port])
    both("destination_port", [_port(v) for v in to_port])
    split("source_port", "destination_port", [_port(v) for v in port])
    for v in verdict:
        if v.upper() not in _VERDICTS:
            raise FilterError(f"verdict {v!r} is not one of {', '.join(_VERDICTS)}")
    both("verdict", [v.upper() for v in verdict])
    for p in protocol:
        if p.lower() not in _PROTOCOLS:
            raise FilterError(f"protocol {p!r} is not one of {', '.join(_PROTOCOLS)}")
    both("protocol", [p.lower() for p in protocol])
    for t in types:
        if t.lower() not in EVENT_TYPES and not t.isdigit():
            raise FilterError(f"type {t!r} is not one of {', '.join(EVENT_TYPES)}")
    both("event_type", [t.lower() for t in types])
    for d in traffic_direction:
        if d.upper() not in ("INGRESS", "EGRESS"):
            raise FilterError(f"traffic direction {d!r} is not ingress or egress")
    both("traffic_direction", [d.upper() for d in traffic_direction])
    both("node_name", node)
    both("source_pod", [n.rstrip("/") + "/" for n in from_namespace])
    both("destination_pod", [n.rstrip("/") + "/" for n in to_namespace])
    both("source_workload", [_workload(v) for v in from_workload])
    both("destination_workload", [_workload(v) for v in to_workload])
    split("source_workload", "destination_workload", [_workload(v) for v in workload])
    both("http_status_code", [_status(v) for v in http_status])
    both("http_method", [m.upper() for m in http_method])
    both("http_path", [_path(v) for v in http_path])
    if left == FlowFilter():
        return []
    return [left, right] if either else [left]
