"""Ring-buffer events → Hubble-shaped flows and auth-required signals (pure)."""

from __future__ import annotations

import socket

import msgspec

from services.datapath.flows import auth_required, event_to_flow
from services.datapath.maps import (
    DIR_EGRESS,
    DIR_INGRESS,
    EVT_AUTH_REQUIRED,
    EVT_DROP,
    EVT_TRACE,
    Event,
    ip_to_be32,
)


class Dir:
    node = "node-1"
    version = 0
    pods = {"10.244.1.5": ("shop", "web"), "10.244.2.7": ("shop", "client")}
    labels = {1001: ["k8s:app=web"], 1002: ["k8s:app=client"]}

    def pod_of(self, ip: str) -> tuple[str, str]:
        return self.pods.get(ip, ("", ""))

    def labels_of(self, identity: int) -> list[str]:
        return self.labels.get(identity, [])

    def node_name(self, node_id: int) -> str:
        return {0: "node-1", 3: "node-2"}.get(node_id, "")


def _ev(**kw: int) -> Event:
    base = dict(
        ts_ns=5_000_000_123, saddr=ip_to_be32("10.244.2.7"), daddr=ip_to_be32("10.244.1.5"),
        src_identity=1002, dst_identity=1001, sport=socket.htons(40000), dport=socket.htons(80),
        ep_id=4, remote_node_id=3, proto=6, tcp_flags=0x02, dir=DIR_INGRESS, type=EVT_DROP, drop_reason=133,
    )  # fmt: skip
    base.update(kw)
    return Event(**base)


def test_drop_flow_is_hubble_shaped() -> None:
    f = event_to_flow(_ev(), Dir(), mono_to_wall_ns=1_700_000_000 * 10**9)
    assert f.verdict == "DROPPED" and f.drop_reason == 133 and f.drop_reason_desc == "POLICY_DENIED"
    assert f.traffic_direction == "INGRESS" and f.node_name == "node-1"
    assert f.ip is not None and (f.ip.source, f.ip.destination) == ("10.244.2.7", "10.244.1.5")
    assert f.l4 is not None and f.l4.tcp is not None
    assert (f.l4.tcp.source_port, f.l4.tcp.destination_port) == (40000, 80)
    assert f.l4.tcp.flags is not None and f.l4.tcp.flags.SYN and not f.l4.tcp.flags.ACK
    assert f.source is not None and f.source.pod_name == "client" and f.source.labels == ["k8s:app=client"]
    assert f.destination is not None and f.destination.ID == 4 and f.destination.identity == 1001
    assert f.time == "2023-11-14T22:13:25.000000123Z"
    wire = msgspec.json.decode(msgspec.json.encode(f))
    assert wire["IP"]["source"] == "10.244.2.7" and wire["l4"]["TCP"]["destination_port"] == 80
    assert wire["event_type"] == {"type": 1, "sub_type": 133}


def test_egress_trace_marks_the_source_endpoint() -> None:
    web, client = ip_to_be32("10.244.1.5"), ip_to_be32("10.244.2.7")
    ev = _ev(type=EVT_TRACE, drop_reason=0, dir=DIR_EGRESS, saddr=web, daddr=client)
    ev.src_identity, ev.dst_identity, ev.proto, ev.auth_type = 1001, 1002, 17, 1
    f = event_to_flow(ev, Dir(), 0)
    assert f.verdict == "FORWARDED" and f.traffic_direction == "EGRESS" and f.drop_reason_desc == ""
    assert f.source is not None and f.source.ID == 4 and f.destination is not None and f.destination.ID == 0
    assert f.l4 is not None and f.l4.udp is not None and f.auth_type == "SPIRE"


def test_icmp_flow() -> None:
    f = event_to_flow(_ev(proto=1, icmp_type=8, icmp_code=0, sport=0, dport=0), Dir(), 0)
    assert f.l4 is not None and f.l4.icmpv4 is not None and f.l4.icmpv4.type == 8


def test_auth_required_local_is_the_endpoint_side() -> None:
    ingress = auth_required(_ev(type=EVT_AUTH_REQUIRED, auth_type=1), Dir(), 1.0)
    assert (ingress.key.local_identity, ingress.key.remote_identity) == (1001, 1002)
    assert ingress.key.remote_node == "node-2" and ingress.remote_ip == "10.244.2.7"
    ev = _ev(type=EVT_AUTH_REQUIRED, auth_type=1, dir=DIR_EGRESS, remote_node_id=0)
    ev.src_identity, ev.dst_identity = 1001, 1002
    egress = auth_required(ev, Dir(), 1.0)
    assert (egress.key.local_identity, egress.key.remote_identity) == (1001, 1002)
    assert egress.key.remote_node == "node-1" and egress.remote_ip == "10.244.1.5"
