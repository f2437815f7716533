"""Pure translation of ring-buffer events into Hubble-shaped flows and auth-required signals.

No I/O: the caller passes a :class:`Directory` that answers "who is this IP / identity / node id"
(from the ipcache, identities and node ids the agent mirrors) and the clock offset that turns the
event's CLOCK_MONOTONIC stamp into wall time.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Callable
from typing import Protocol

from nodemesh.messages.auth import AuthKey, AuthRequired
from nodemesh.messages.flow import IP, L4, TCP, UDP, Endpoint, Flow, ICMPv4, Service, TCPFlags
from nodemesh.workload import pod_workload
from services.datapath.maps import DIR_EGRESS, EVT_DROP, EVT_TRACE, Event, be32_to_ip

__all__ = [
    "DROP_REASONS",
    "TRACE_POINTS",
    "Directory",
    "ServiceLookup",
    "auth_required",
    "event_to_flow",
    "tcp_flags",
]

#: Cilium's DropReason names (flow.proto) for the reasons our programs produce.
DROP_REASONS: dict[int, str] = {
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    178: "SOCKET_LOOKUP_FAILED",
    179: "SOCKET_ASSIGN_FAILED",
    181: "POLICY_DENY",
    189: "AUTH_REQUIRED",
}
AUTH_TYPES = {0: "DISABLED", 1: "SPIRE", 2: "TEST_ALWAYS_FAIL"}
#: Cilium's trace observation points (monitor sub_type → flow.proto TraceObservationPoint) that our
#: programs stand for: at the endpoint's device, traffic redirected to the node's Envoy is TO_PROXY,
#: other traffic leaving the pod FROM_ENDPOINT, other traffic delivered to it TO_ENDPOINT.
TRACE_POINTS: dict[int, str] = {0: "TO_ENDPOINT", 1: "TO_PROXY", 5: "FROM_ENDPOINT"}
_TRACE_TO_LXC, _TRACE_TO_PROXY, _TRACE_FROM_LXC = 0, 1, 5
_PROTO = {6: "TCP", 17: "UDP", 1: "ICMPv4", 132: "SCTP"}


#: (ip, port, proto) → (namespace, name) of the Service that address is a backend of, or None
ServiceLookup = Callable[[str, int, int], tuple[str, str] | None]


class Directory(Protocol):
    node: str
    version: int  # changes whenever an answer below may change (endpoint cache key)

    def pod_of(self, ip: str) -> tuple[str, str]: ...  # (namespace, pod) or ("", "")

    def labels_of(self, identity: int) -> list[str]: ...

    def node_name(self, node_id: int) -> str: ...


def tcp_flags(bits: int) -> TCPFlags:
    return TCPFlags(
        FIN=bool(bits & 0x01),
        SYN=bool(bits & 0x02),
        RST=bool(bits & 0x04),
        PSH=bool(bits & 0x08),
        ACK=bool(bits & 0x10),
        URG=bool(bits & 0x20),
    )


def _flag_names(bits: int) -> str:
    names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
    return ", ".join(n for i, n in enumerate(names) if bits & (1 << i))


_cache: dict[tuple[int, int, str, int, int], Endpoint] = {}


def _endpoint(d: Directory, ip: str, identity: int, ep_id: int) -> Endpoint:
    # Flows of one connection repeat the same endpoints: memoize per directory version (bounded).
    key = (id(d), d.version, ip, identity, ep_id)  # per directory: two agents (or tests) never share
    ep = _cache.get(key)
    if ep is None:
        if len(_cache) > 4096:
            _cache.clear()
        ns, pod = d.pod_of(ip)
        w = pod_workload(pod)
        ep = Endpoint(
            ID=ep_id,
            identity=identity,
            namespace=ns,
            pod_name=pod,
            labels=d.labels_of(identity),
            workloads=[w] if w is not None else [],
        )
        _cache[key] = ep
    return ep


def _time(ts_ns: int, mono_to_wall_ns: int) -> str:
    wall = ts_ns + mono_to_wall_ns
    t = dt.datetime.fromtimestamp(wall // 1_000_000_000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{wall % 1_000_000_000:09d}Z"


def _service(services: ServiceLookup | None, ip: str, port: int, proto: int) -> Service | None:
    if services is None or proto not in (6, 17):
        return None
    ref = services(ip, port, proto)
    return Service(namespace=ref[0], name=ref[1]) if ref is not None else None


def event_to_flow(
    ev: Event, d: Directory, mono_to_wall_ns: int, services: ServiceLookup | None = None
) -> Flow:
    """``services`` attributes backends to Services (docs/services.md, "Flows"): packets of a
    socket-balanced connection carry the backend's address, so a request to a backend gets the
    backend's Service as ``destination_service`` and a reply from it ``source_service``."""
    src_ip, dst_ip = be32_to_ip(ev.saddr), be32_to_ip(ev.daddr)
    egress = ev.dir == DIR_EGRESS
    # the local endpoint is the source at egress and the destination at ingress
    src = _endpoint(d, src_ip, ev.src_identity, ev.ep_id if egress else 0)
    dst = _endpoint(d, dst_ip, ev.dst_identity, 0 if egress else ev.ep_id)
    sport, dport = socket.ntohs(ev.sport), socket.ntohs(ev.dport)
    l4: L4 | None = None
    summary = ""
    if ev.proto == 6:
        l4 = L4(tcp=TCP(source_port=sport, destination_port=dport, flags=tcp_flags(ev.tcp_flags)))
        summary = f"TCP Flags: {_flag_names(ev.tcp_flags)}"
    elif ev.proto == 17:
        l4 = L4(udp=UDP(source_port=sport, destination_port=dport))
        summary = "UDP"
    elif ev.proto == 132:
        l4 = L4(sctp=UDP(source_port=sport, destination_port=dport))
        summary = "SCTP"
    elif ev.proto == 1:
        l4 = L4(icmpv4=ICMPv4(type=ev.icmp_type, code=ev.icmp_code))
        summary = f"ICMPv4 type {ev.icmp_type}"
    dropped = ev.type == EVT_DROP
    reply = bool(ev.is_reply)
    dst_svc = None if reply else _service(services, dst_ip, dport, int(ev.proto))
    src_svc = _service(services, src_ip, sport, int(ev.proto)) if reply else None
    reason = DROP_REASONS.get(ev.drop_reason, str(ev.drop_reason)) if dropped else ""
    sub_type = int(ev.drop_reason) if dropped else 0
    point = ""
    if ev.type == EVT_TRACE:
        sub_type = _TRACE_TO_PROXY if ev.proxy_port else _TRACE_FROM_LXC if egress else _TRACE_TO_LXC
        point = TRACE_POINTS[sub_type]
    return Flow(
        ip=IP(source=src_ip, destination=dst_ip),
        time=_time(ev.ts_ns, mono_to_wall_ns),
        uuid=str(uuid.uuid4()),
        Type="L3_L4",
        verdict="DROPPED" if dropped else "REDIRECTED" if ev.proxy_port else "FORWARDED",
        l4=l4,
        source=src,
        destination=dst,
        node_name=d.node,
        event_type={"type": int(ev.type), "sub_type": sub_type},
        traffic_direction="EGRESS" if egress else "INGRESS",
        drop_reason=int(ev.drop_reason) if dropped else 0,
        drop_reason_desc=reason,
        is_reply=reply,
        auth_type=AUTH_TYPES.get(ev.auth_type, str(ev.auth_type)) if ev.auth_type else "",
        policy_match_type=int(ev.match_type),
        trace_observation_point=point,
        Summary=f"{reason}; {summary}" if dropped else summary,
        source_service=src_svc,
        destination_service=dst_svc,
    )


def auth_required(ev: Event, d: Directory, wall_ts: float) -> AuthRequired:
    """The signal authd needs: the local endpoint's identity, the peer's, and the peer's node."""
    egress = ev.dir == DIR_EGRESS
    local, remote = (ev.src_identity, ev.dst_identity) if egress else (ev.dst_identity, ev.src_identity)
    remote_ip = be32_to_ip(ev.daddr if egress else ev.saddr)
    node = d.node_name(ev.remote_node_id) if ev.remote_node_id else d.node
    return AuthRequired(
        key=AuthKey(local_identity=local, remote_identity=remote, remote_node=node, auth_type=ev.auth_type),
        remote_ip=remote_ip,
        ts=wall_ts,
    )
