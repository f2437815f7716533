"""The holes a datapath review found, closed — in the real kernel, same node and across nodes.

Each deny is asserted twice (the traffic fails AND the drop counter of the expected reason moved);
each test also shows the legitimate traffic next to it still passing.
"""

from __future__ import annotations

import socket
import time

import pytest

from meshctl.observe_stream import format_row
from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.conntrack import CtLifetimes, flush_endpoint, gc
from services.datapath.flows import event_to_flow
from services.datapath.maps import EP_FAIL_CLOSED, EVT_DROP, be32_to_ip, ip_to_be32
from testkit.datapath_node import TNode, ingress_policy
from testkit.podnet import (
    Listener,
    echo,
    eventually,
    icmp_error,
    icmp_listener,
    icmp_seen,
    servers,
    tcp_ok,
    tcp_open,
    udp_ok,
    udp_refused,
    udp_spoofed,
    wait_for,
)

from .placement import WHERE, Placed

pytestmark = pytest.mark.privileged

INVALID_SIP, POLICY_DENIED, CT_NO_ENTRY = 132, 133, 138
ING, EGR = 0, 1
TCP, UDP, ICMP = 6, 17, 1


def denied(node: TNode, reason: int, before: dict[int, int]) -> bool:
    return wait_for(lambda: node.drops().get(reason, 0) > before.get(reason, 0))


def drain(lis: Listener, timeout: float = 1.0) -> list[bytes]:
    got: list[bytes] = []
    while (d := lis.recv(timeout)) is not None:
        got.append(d)
    return got


class _Dir:
    node = "node-x"
    version = 0

    def pod_of(self, ip: str) -> tuple[str, str]:
        return ("", "")

    def labels_of(self, identity: int) -> list[str]:
        return []

    def node_name(self, node_id: int) -> str:
        return ""


@pytest.mark.parametrize("where", WHERE)
def test_privileged_spoofed_source_is_dropped_and_shown(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    c = Placed(make_node, where)
    a = c.pod("a", subnet + "2", 1001, on="x")
    v = c.pod("v", subnet + "4", 1003, on="x")  # the pod whose address b forges
    b = c.pod("b", subnet + "3", 1002, on="y")
    c.set_policy(a, ingress_policy({PolicyKey(1003, ING, UDP, 53, 16): PolicyValue()}))  # only v, UDP 53
    bn = c.node(b)
    lis = Listener(a.ns, 53)
    try:
        # the same crafted packet with the sender's own address passes: v is allowed
        def real() -> bool:
            udp_spoofed(v.ns, v.ip, a.ip, 4000, 53, b"real")
            return lis.recv(0.3) == b"real"

        assert eventually(real)
        drain(lis, 0.3)
        before = bn.drops()
        udp_spoofed(b.ns, v.ip, a.ip, 4001, 53, b"forged")  # b claims to be v
        assert denied(bn, INVALID_SIP, before)
        assert b"forged" not in drain(lis, 1.0)
    finally:
        lis.close()
    # b's own traffic, and a server's replies, carry their own address: they pass
    with servers(v.ns, udp=(54,), tcp=(80,)):
        assert eventually(udp_ok, b.ns, v.ip, 54)
        assert eventually(tcp_ok, b.ns, v.ip, 80)
    ev = next(e for e in bn.events if e.type == EVT_DROP and e.drop_reason == INVALID_SIP)
    assert (ev.dir, ev.src_identity, be32_to_ip(ev.saddr), ev.proto) == (EGR, 1002, v.ip, UDP)
    flow = event_to_flow(ev, _Dir(), 0)
    assert (flow.verdict, flow.drop_reason, flow.drop_reason_desc) == ("DROPPED", 132, "INVALID_SOURCE_IP")
    assert "INVALID_SOURCE_IP" in flow.Summary
    assert "DROPPED (INVALID_SOURCE_IP)" in " ".join(format_row(flow))  # what `nodemesh observe` prints


@pytest.mark.parametrize("where", WHERE)
def test_privileged_icmp_error_passes_only_for_a_tracked_connection(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    c = Placed(make_node, where)
    a = c.pod("a", subnet + "2", 1001, on="x")
    b = c.pod("b", subnet + "3", 1002, on="y")
    c.set_policy(a, ingress_policy({PolicyKey(1002, ING, TCP, 80, 16): PolicyValue()}))  # no ICMP allowed
    an, bn = c.node(a), c.node(b)
    r = icmp_listener(a.ns)
    try:
        # related: a's datagram to a closed port of b comes back as b's port-unreachable, which
        # crosses b's egress and a's ingress as related to the flow a started
        assert eventually(udp_refused, a.ns, b.ip, 6666)
        # crafted by b about a flow that never was: dropped at b's egress
        before = bn.drops()
        icmp_error(b.ns, b.ip, a.ip, (a.ip, b.ip, UDP, 5555, 6667))
        assert denied(bn, CT_NO_ENTRY, before)
        assert not icmp_seen(r, 3, 1.0, quoted_dport=6667)
        # sent by the host (no egress program on the way): dropped at a's ingress
        before = an.drops()
        icmp_error("", b.ip, a.ip, (a.ip, b.ip, UDP, 5555, 6668))
        assert denied(an, CT_NO_ENTRY, before)
        assert not icmp_seen(r, 3, 1.0, quoted_dport=6668)
    finally:
        r.close()
    drops = [e for n in c.nodes for e in n.events if e.type == EVT_DROP and e.drop_reason == CT_NO_ENTRY]
    assert drops and all(e.proto == ICMP and e.icmp_type == 3 for e in drops)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_reply_after_deny_change_is_dropped(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    c = Placed(make_node, where)
    a = c.pod("a", subnet + "2", 1001, on="x")
    b = c.pod("b", subnet + "3", 1002, on="y")
    allow = EndpointPolicy(egress_enforced=True, entries={PolicyKey(1001, EGR, UDP, 53, 16): PolicyValue()})
    c.set_policy(b, allow)
    bn = c.node(b)
    srv, cli = Listener(a.ns, 53), Listener(b.ns)
    try:

        def request() -> bool:
            cli.sock.sendto(b"req", (a.ip, 53))
            return srv.recv(0.3) == b"req"

        assert eventually(request)
        drain(srv, 0.2)
        # a reply-only flow: a keeps sending from port 53 to b's port without b sending again
        srv.sock.sendto(b"r1", (b.ip, cli.port))
        assert cli.recv(2.0) == b"r1"
        # b's egress policy stops allowing the flow: its replies are judged again and dropped
        c.set_policy(b, EndpointPolicy(egress_enforced=True, entries={}))
        before = bn.drops()
        srv.sock.sendto(b"r2", (b.ip, cli.port))
        assert denied(bn, POLICY_DENIED, before)
        assert cli.recv(1.0) is None
        # allowed again: a new request opens the flow, replies pass
        c.set_policy(b, allow)
        assert eventually(request)
        srv.sock.sendto(b"r3", (b.ip, cli.port))
        assert b"r3" in drain(cli, 1.0)
    finally:
        srv.close()
        cli.close()
    ev = next(e for e in bn.events if e.type == EVT_DROP and e.drop_reason == POLICY_DENIED)
    assert (ev.dir, ev.proto, socket.ntohs(ev.sport), be32_to_ip(ev.saddr)) == (ING, UDP, 53, a.ip)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_conntrack_entries_expire(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    lt = CtLifetimes(any=2, tcp_fin=2)  # short lifetimes; established TCP keeps its 8000 s
    c = Placed(make_node, where, defines=lt.defines())
    a = c.pod("a", subnet + "2", 1001, on="x")
    b = c.pod("b", subnet + "3", 1002, on="y")
    # b may open UDP 53 and TCP 80 to a; nothing may open a flow into b
    pol = EndpointPolicy(
        ingress_enforced=True,
        egress_enforced=True,
        entries={
            PolicyKey(1001, EGR, UDP, 53, 16): PolicyValue(),
            PolicyKey(1001, EGR, TCP, 80, 16): PolicyValue(),
        },
    )
    c.set_policy(b, pol)
    bn = c.node(b)
    a_be = ip_to_be32(a.ip)
    b_be = ip_to_be32(b.ip)

    def entries(proto: int) -> list[object]:
        """the entries of the flows b opened to a (at b's egress and at a's ingress)"""
        keys = [k for n in c.nodes for k, _ in n.maps.ct_items()]
        return [k for k in keys if k.proto == proto and (k.saddr, k.daddr) == (b_be, a_be)]

    srv, cli = Listener(a.ns, 53), Listener(b.ns)
    try:
        with servers(a.ns, tcp=(80,)):
            conn = tcp_open(b.ns, a.ip, 80)
            assert echo(conn)

            def request() -> bool:
                cli.sock.sendto(b"req", (a.ip, 53))
                return srv.recv(0.3) == b"req"

            assert eventually(request)
            srv.sock.sendto(b"r1", (b.ip, cli.port))
            assert cli.recv(2.0) == b"r1"  # a reply: passes b's ingress through conntrack
            assert entries(UDP) and entries(TCP)
            time.sleep(lt.any + 1.5)  # past the UDP lifetime since the flow's last packet
            before = bn.drops()
            srv.sock.sendto(b"r2", (b.ip, cli.port))  # no longer a reply: a new flow into b, denied
            assert denied(bn, POLICY_DENIED, before)
            assert cli.recv(1.0) is None
            # the agent's GC removes what expired; the established TCP connection stays and flows
            for n in c.nodes:
                gc(n.maps, lt, time.monotonic_ns())
            assert not entries(UDP)
            assert entries(TCP)
            assert echo(conn, b"still-open")
            conn.close()
            assert wait_for(lambda: any(e.tcp_flags & 0x01 for n in c.nodes for e in n.events))  # FIN seen
            time.sleep(lt.tcp_fin + 1.5)  # a closed connection lives tcp_fin seconds
            for n in c.nodes:
                gc(n.maps, lt, time.monotonic_ns())
            assert not entries(TCP)
            # an endpoint that goes takes its entries with it
            conn = tcp_open(b.ns, a.ip, 80)
            assert echo(conn)
            assert entries(TCP)
            for n in c.nodes:
                flush_endpoint(n.maps, a.ip)
            assert not entries(TCP)
            conn.close()
    finally:
        srv.close()
        cli.close()


@pytest.mark.parametrize("where", WHERE)
def test_privileged_full_policy_map_fails_closed(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    c = Placed(make_node, where, defines={"NM_POLICY_MAX": 8})
    a = c.pod("a", subnet + "2", 1001, on="x")
    f = c.pod("f", subnet + "4", 1003, on="x")  # another endpoint of a's node, holding most entries
    b = c.pod("b", subnet + "3", 1002, on="y")
    an = c.node(a)
    c.set_policy(a, ingress_policy({PolicyKey(1002, ING, TCP, 80, 16): PolicyValue()}))
    filler = ingress_policy({PolicyKey(1002, ING, TCP, p, 16): PolicyValue() for p in range(9000, 9006)})
    c.set_policy(f, filler)  # 7 of 8 entries used
    with servers(a.ns, tcp=(80,)):
        conn = tcp_open(b.ns, a.ip, 80)
        assert echo(conn)
        # a's new policy needs three more entries, among them a deny: it cannot be written
        new = ingress_policy(
            {
                PolicyKey(1002, ING, TCP, 80, 16): PolicyValue(),
                PolicyKey(1002, ING, TCP, 81, 16): PolicyValue(deny=True),
                PolicyKey(0, ING, UDP, 53, 16): PolicyValue(),
                PolicyKey(0, ING, TCP, 82, 16): PolicyValue(),
            }
        )
        before = an.drops()
        c.set_policy(a, new)
        assert a.ep_id in an.writer.failed and "policy map full" in an.writer.failed[a.ep_id]
        assert an.writer.full_writes >= 1
        info = dict(an.maps.endpoint_items())[a.link.host_ifindex]
        assert info.flags & EP_FAIL_CLOSED
        # closed, not open: the established connection is cut and the old allow no longer admits
        assert not echo(conn, b"after-full")
        conn.close()
        assert not tcp_ok(b.ns, a.ip, 80)
        assert denied(an, POLICY_DENIED, before)
        # room again (f's entries go): the whole policy is written and a opens as it says
        c.set_policy(f, EndpointPolicy())
        c.set_policy(a, new)
        assert a.ep_id not in an.writer.failed
        assert not dict(an.maps.endpoint_items())[a.link.host_ifindex].flags & EP_FAIL_CLOSED
        assert eventually(tcp_ok, b.ns, a.ip, 80)
