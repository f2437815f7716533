"""L4 events of redirected flows → REDIRECTED flows; proxy socket failures → named drops (pure)."""

from __future__ import annotations

import socket

from services.datapath.flows import event_to_flow
from services.datapath.maps import DIR_INGRESS, EVT_DROP, EVT_TRACE, Event, ip_to_be32
from tests.datapath.test_flows import Dir


def _ev(**kw: int) -> Event:
    base = dict(
        ts_ns=1, saddr=ip_to_be32("10.244.2.7"), daddr=ip_to_be32("10.244.1.5"), src_identity=1002,
        dst_identity=1001, sport=socket.htons(40000), dport=socket.htons(8080), ep_id=4, proto=6,
        tcp_flags=0x02, dir=DIR_INGRESS, type=EVT_TRACE,
    )  # fmt: skip
    base.update(kw)
    return Event(**base)


def test_a_redirected_flow_is_redirected_and_a_plain_one_forwarded() -> None:
    assert event_to_flow(_ev(proxy_port=socket.htons(10001)), Dir(), 0).verdict == "REDIRECTED"
    assert event_to_flow(_ev(), Dir(), 0).verdict == "FORWARDED"


def test_proxy_socket_failures_are_named_drops() -> None:
    for reason, desc in ((178, "SOCKET_LOOKUP_FAILED"), (179, "SOCKET_ASSIGN_FAILED")):
        f = event_to_flow(_ev(type=EVT_DROP, drop_reason=reason, proxy_port=socket.htons(10001)), Dir(), 0)
        assert (f.verdict, f.drop_reason_desc) == ("DROPPED", desc)
