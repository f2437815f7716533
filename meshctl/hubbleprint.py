"""``observe`` output in the hubble CLI's formats (pure): ``json``/``jsonpb``, ``compact``, ``dict``.

- ``json``/``jsonpb``: one ``observer.GetFlowsResponse`` per line in protojson, as ``hubble observe
  -o json`` prints it: ``{"flow": {…}, "node_name": …, "time": …}``, so ``jq '.flow.…'`` recipes
  and ``hubble observe --input-file`` read it.
- ``compact``: ``TIME [NODE]: SRC (ID) -> DST (ID) TYPE VERDICT (SUMMARY)`` with the arrow flipped
  (``<-``) and the sides swapped for replies, ``<>`` when it is unknown whether a flow is a reply.
- ``dict``: one ``KEY: value`` block per flow, blocks separated by ``------------``.

TYPE is hubble's: ``to-endpoint``/``from-endpoint``/``to-proxy`` for traces, the drop reason for
drops, ``policy-verdict:<match> <DIRECTION>`` for policy verdicts, ``http-request``/``http-response``
for L7. Times are UTC (``Jan _2 15:04:05.000``, Go's StampMilli).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from nodemesh.labels import RESERVED_NAMES
from nodemesh.messages.flow import Flow

__all__ = ["DICT_SEPARATOR", "compact_line", "dict_block", "flow_type", "json_line", "response"]

DICT_SEPARATOR = "------------"
_TRACE = 4
_DROP = 1
_POLICY_VERDICT = 5
_L7 = 129
#: cilium monitor's trace observation point names, by TraceObservationPoint enum name
_TRACE_NAMES = {
    "TO_ENDPOINT": "to-endpoint",
    "TO_PROXY": "to-proxy",
    "TO_HOST": "to-host",
    "TO_STACK": "to-stack",
    "TO_OVERLAY": "to-overlay",
    "TO_NETWORK": "to-network",
    "FROM_ENDPOINT": "from-endpoint",
    "FROM_PROXY": "from-proxy",
    "FROM_HOST": "from-host",
    "FROM_STACK": "from-stack",
    "FROM_OVERLAY": "from-overlay",
    "FROM_NETWORK": "from-network",
}
#: cilium monitor's drop reason texts, for the reasons nodemesh's programs produce
_DROP_TEXT = {
    133: "Policy denied",
    134: "Invalid packet",
    178: "Socket lookup failed",
    179: "Socket assign failed",
    181: "Policy denied by denylist",
    189: "Authentication required",
}
#: cilium's PolicyMatchType names
_MATCH = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}


def response(flow: Flow) -> dict[str, Any]:
    """The GetFlowsResponse of ``flow`` as protojson builtins."""
    f = msgspec.to_builtins(flow)
    desc = f.get("drop_reason_desc")
    if isinstance(desc, str) and desc.isdigit():
        f["drop_reason_desc"] = int(desc)  # a reason without a name: protojson prints the number
    out: dict[str, Any] = {"flow": f}
    if flow.node_name:
        out["node_name"] = flow.node_name
    if flow.time:
        out["time"] = flow.time
    return out


def json_line(flow: Flow) -> str:
    return msgspec.json.encode(response(flow)).decode()


def stamp_milli(ts: str) -> str:
    """RFC 3339 (nanoseconds allowed) → ``Nov 26 22:04:57.123`` (UTC, day space-padded); else as is."""
    head, dot, rest = ts.partition(".")
    frac = "".join(c for c in rest if c.isdigit()) if dot else ""
    try:
        t = datetime.fromisoformat(head.removesuffix("Z") + "+00:00" if head.endswith("Z") else head)
    except ValueError:
        return ts
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return f"{t.strftime('%b')} {t.day:2d} {t.strftime('%H:%M:%S')}.{frac[:3].ljust(3, '0')}"


def _ports(flow: Flow) -> tuple[int, int]:
    l4 = flow.l4
    for part in (l4.tcp, l4.udp, l4.sctp) if l4 else ():
        if part is not None:
            return part.source_port, part.destination_port
    return 0, 0


def _host(ip: str, port: int, ns: str, pod: str, svc: str) -> str:
    host = f"{ns}/{pod}" if pod else f"{ns}/{svc}" if svc else ip
    return f"{host}:{port}" if port else host


def hostnames(flow: Flow) -> tuple[str, str]:
    """Source and destination as hubble names them: ``ns/pod:port``, else ``ns/service:port``, else IP."""
    if flow.ip is None:
        return "", ""
    sport, dport = _ports(flow)
    sides = []
    for ep, svc, ip, port in (
        (flow.source, flow.source_service, flow.ip.source, sport),
        (flow.destination, flow.destination_service, flow.ip.destination, dport),
    ):
        ns = ep.namespace if ep else ""
        if svc is not None and svc.name:
            ns = svc.namespace
        sides.append(_host(ip, port, ns, ep.pod_name if ep else "", svc.name if svc else ""))
    return sides[0], sides[1]


def _identity(flow: Flow, source: bool) -> str:
    ep = flow.source if source else flow.destination
    n = ep.identity if ep else 0
    name = RESERVED_NAMES.get(n)
    return f"({name})" if name and n else f"(ID:{n})"


def flow_type(flow: Flow) -> str:
    """Hubble's TYPE column."""
    if flow.l7 is not None:
        proto = "http" if flow.l7.http is not None else "l7"
        return f"{proto}-{(flow.l7.type or 'UNKNOWN_L7_TYPE').lower()}"
    t, sub = flow.event_type.get("type", 0), flow.event_type.get("sub_type", 0)
    if t == _TRACE:
        return _TRACE_NAMES.get(flow.trace_observation_point, flow.trace_observation_point or "UNKNOWN")
    if t == _DROP:
        return _DROP_TEXT.get(sub, flow.drop_reason_desc or str(sub))
    if t == _POLICY_VERDICT:
        match = _MATCH.get(flow.policy_match_type, str(flow.policy_match_type))
        return f"policy-verdict:{match} {flow.traffic_direction or 'TRAFFIC_DIRECTION_UNKNOWN'}"
    return "UNKNOWN"


def verdict(flow: Flow) -> str:
    v = flow.verdict or "VERDICT_UNKNOWN"
    if flow.event_type.get("type", 0) == _POLICY_VERDICT:
        return {"FORWARDED": "ALLOWED", "REDIRECTED": "ALLOWED", "DROPPED": "DENIED", "ERROR": "DENIED"}.get(
            v, "AUDITED" if v == "AUDIT" else v
        )
    return v


def summary(flow: Flow) -> str:
    s = flow.Summary
    if flow.auth_type and flow.auth_type != "DISABLED":
        s += "; " + flow.auth_type
    return s


def compact_line(flow: Flow, node_name: bool = False) -> str:
    src, dst = hostnames(flow)
    sid, did = _identity(flow, True), _identity(flow, False)
    arrow = "->"
    if flow.is_reply is None:
        arrow = "<>"
    elif flow.is_reply:
        src, dst, sid, did, arrow = dst, src, did, sid, "<-"
    node = f" [{flow.node_name}]" if node_name else ""
    return (
        f"{stamp_milli(flow.time)}{node}: {src} {sid} {arrow} {dst} {did} "
        f"{flow_type(flow)} {verdict(flow)} ({summary(flow)})"
    )


def dict_block(flow: Flow, node_name: bool = False) -> list[str]:
    src, dst = hostnames(flow)
    lines = [f"  TIMESTAMP: {stamp_milli(flow.time)}"]
    if node_name:
        lines.append(f"       NODE: {flow.node_name}")
    return [
        *lines,
        f"     SOURCE: {src}",
        f"DESTINATION: {dst}",
        f"       TYPE: {flow_type(flow)}",
        f"    VERDICT: {verdict(flow)}",
        f"    SUMMARY: {summary(flow)}",
    ]
