"""Sample flows for the observe tests."""

from __future__ import annotations

from nodemesh.messages.flow import HTTP, IP, L4, L7, TCP, UDP, Endpoint, Flow, ICMPv4, TCPFlags


def ep(ns: str, pod: str, ident: int, *labels: str) -> Endpoint:
    return Endpoint(namespace=ns, pod_name=pod, identity=ident, labels=list(labels))


WEB = ep("prod", "web-7d9f", 1000, "k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod")
FE = ep("prod", "fe-abc", 1001, "k8s:app=fe", "k8s:tier=front", "k8s:io.kubernetes.pod.namespace=prod")
DEV = ep("dev", "fe-xyz", 1002, "k8s:app=fe", "k8s:io.kubernetes.pod.namespace=dev")
WORLD = Endpoint(identity=2, labels=["reserved:world"])


def flow(
    src: Endpoint,
    dst: Endpoint,
    *,
    sip: str = "10.244.1.5",
    dip: str = "10.244.1.7",
    proto: str = "tcp",
    sport: int = 40000,
    dport: int = 80,
    verdict: str = "FORWARDED",
    etype: int = 4,
    direction: str = "INGRESS",
    reason: str = "",
    node: str = "node-1",
    time: str = "2026-11-26T22:04:57.123456789Z",
    syn: bool = True,
    l7: L7 | None = None,
) -> Flow:
    if proto == "tcp":
        l4 = L4(tcp=TCP(source_port=sport, destination_port=dport, flags=TCPFlags(SYN=syn, ACK=not syn)))
    elif proto == "udp":
        l4 = L4(udp=UDP(source_port=sport, destination_port=dport))
    elif proto == "sctp":
        l4 = L4(sctp=UDP(source_port=sport, destination_port=dport))
    else:
        l4 = L4(icmpv4=ICMPv4(type=8))
    return Flow(
        time=time,
        verdict=verdict,
        ip=IP(source=sip, destination=dip),
        l4=l4,
        l7=l7,
        source=src,
        destination=dst,
        Type="L7" if l7 else "L3_L4",
        node_name=node,
        event_type={"type": etype},
        traffic_direction=direction,
        drop_reason=133 if reason == "POLICY_DENIED" else 189 if reason == "AUTH_REQUIRED" else 0,
        drop_reason_desc=reason,
    )


HTTP_REQ = L7(type="REQUEST", http=HTTP(method="GET", url="http://web/api", protocol="HTTP/1.1"))
