"""The tc programs in the real kernel, driven through the map layer with hand-made policy entries.

Real netns pods, real TCP/UDP/ICMP. Every deny is asserted twice: the traffic fails AND the drop
counter for the expected reason moved (so a broken setup cannot pass as "denied"). Every test runs
with the server (``a``, node x) and its clients on the same node and on another node (y): ingress
drops are counted where the server is, egress drops where the client is.
"""

from __future__ import annotations

import socket

import pytest

from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.maps import EVT_DROP, EVT_TRACE
from testkit.datapath_node import TNode, ingress_policy
from testkit.podnet import echo, eventually, ping_ok, servers, tcp_ok, tcp_open, udp_ok, wait_for

from .placement import WHERE, Placed

pytestmark = pytest.mark.privileged

POLICY_DENIED = 133
POLICY_DENY = 181
AUTH_REQUIRED = 189
ING, EGR = 0, 1
TCP, UDP, ICMP = 6, 17, 1


def denied(node: TNode, reason: int, before: dict[int, int]) -> bool:
    return wait_for(lambda: node.drops().get(reason, 0) > before.get(reason, 0))


@pytest.mark.parametrize("where", WHERE)
def test_privileged_no_policy_allows_everything(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    with servers(a.ns, tcp=(80,), udp=(53,)):
        assert eventually(tcp_ok, b.ns, a.ip, 80)
        assert eventually(udp_ok, b.ns, a.ip, 53)
        assert eventually(ping_ok, b.ns, a.ip)
    assert all(n.drops() == {} for n in pl.nodes)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_allow_deny_matrix_tcp_udp_icmp(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    c = pl.pod("c", subnet + "4", 1003, on="y")
    n = pl.node(a)  # ingress drops happen where the server is
    # a: ingress enforced; b may reach TCP 80 and UDP 53 and ping; c only UDP 53 (via L4-only any-id)
    pl.set_policy(
        a,
        ingress_policy(
            {
                PolicyKey(1002, ING, TCP, 80, 16): PolicyValue(),
                PolicyKey(0, ING, UDP, 53, 16): PolicyValue(),
                PolicyKey(1002, ING, ICMP, 8, 16): PolicyValue(),
            }
        ),
    )
    with servers(a.ns, tcp=(80, 81), udp=(53, 54)):
        before = n.drops()
        assert eventually(tcp_ok, b.ns, a.ip, 80)  # L3+L4 allow; the reply passes through CT
        assert eventually(udp_ok, b.ns, a.ip, 53)  # L4-only allow
        assert eventually(udp_ok, c.ns, a.ip, 53)
        assert eventually(ping_ok, b.ns, a.ip)  # ICMP echo (type 8) allowed, echo reply passes as a reply
        assert not tcp_ok(c.ns, a.ip, 80)  # identity not allowed
        assert not tcp_ok(b.ns, a.ip, 81)  # port not allowed
        assert not udp_ok(b.ns, a.ip, 54)
        assert not ping_ok(c.ns, a.ip)
        assert denied(n, POLICY_DENIED, before)
        # a's egress is not enforced: a reaches b freely
    with servers(b.ns, tcp=(9000,)):
        assert eventually(tcp_ok, a.ns, b.ip, 9000)
    drops = [e for e in n.events if e.type == EVT_DROP]
    assert {(e.proto, socket.ntohs(e.dport) if e.proto != ICMP else e.icmp_type) for e in drops} >= {
        (TCP, 80),
        (TCP, 81),
        (UDP, 54),
        (ICMP, 8),
    }
    assert all(e.drop_reason == POLICY_DENIED and e.dst_identity == 1001 for e in drops)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_deny_beats_allow_and_precedence(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    c = pl.pod("c", subnet + "4", 1003, on="y")
    n = pl.node(a)  # ingress drops happen where the server is
    pl.set_policy(
        a,
        ingress_policy(
            {
                PolicyKey(0, ING): PolicyValue(),  # allow all...
                PolicyKey(1003, ING, TCP, 80, 16): PolicyValue(deny=True),  # ...but deny c on TCP 80
                PolicyKey(1002, ING): PolicyValue(deny=True),  # deny b everything (L3-only deny)
                PolicyKey(1002, ING, TCP, 81, 16): PolicyValue(),  # a more specific allow loses to it
            }
        ),
    )
    with servers(a.ns, tcp=(80, 81)):
        before = n.drops()
        assert eventually(tcp_ok, c.ns, a.ip, 81)
        assert not tcp_ok(c.ns, a.ip, 80)
        assert not tcp_ok(b.ns, a.ip, 81)
        assert not tcp_ok(b.ns, a.ip, 80)
        assert denied(n, POLICY_DENY, before)
        assert POLICY_DENIED not in n.drops()


@pytest.mark.parametrize("where", WHERE)
def test_privileged_port_ranges_and_egress(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    from nodemesh.policy.model import port_range_chunks

    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    n = pl.node(b)  # egress drops happen where the client is
    # b's egress: only TCP 8080-8083 (one /14 chunk) and 9000-9002 (chunks) to anyone
    entries = {
        PolicyKey(0, EGR, TCP, port, plen): PolicyValue()
        for lo, hi in ((8080, 8083), (9000, 9002))
        for port, plen in port_range_chunks(lo, hi)
    }
    pl.set_policy(b, EndpointPolicy(egress_enforced=True, entries=entries))
    with servers(a.ns, tcp=(8079, 8080, 8083, 8084, 9002, 9003)):
        assert eventually(tcp_ok, b.ns, a.ip, 8080)
        assert eventually(tcp_ok, b.ns, a.ip, 8083)
        assert eventually(tcp_ok, b.ns, a.ip, 9002)
        before = n.drops()
        assert not tcp_ok(b.ns, a.ip, 8079)
        assert not tcp_ok(b.ns, a.ip, 8084)
        assert not tcp_ok(b.ns, a.ip, 9003)
        assert denied(n, POLICY_DENIED, before)
    egress_drops = [e for e in n.events if e.type == EVT_DROP]
    assert egress_drops and all(e.dir == EGR and e.src_identity == 1002 for e in egress_drops)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_policy_change_on_live_endpoint(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    n = pl.node(a)  # ingress drops happen where the server is
    allow = ingress_policy({PolicyKey(1002, ING, TCP, 80, 16): PolicyValue()})
    pl.set_policy(a, allow)
    with servers(a.ns, tcp=(80,)):
        conn = tcp_open(b.ns, a.ip, 80)
        assert echo(conn)
        # revoke: the established connection is cut on its next packet, new ones are denied
        before = n.drops()
        pl.set_policy(a, ingress_policy({}))
        assert not echo(conn, b"after-revoke")
        conn.close()
        assert not tcp_ok(b.ns, a.ip, 80)
        assert denied(n, POLICY_DENIED, before)
        # and granted again
        pl.set_policy(a, allow)
        assert eventually(tcp_ok, b.ns, a.ip, 80)


@pytest.mark.parametrize("where", WHERE)
def test_privileged_trace_events_aggregated_per_connection(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    with servers(a.ns, tcp=(80,)):
        conn = tcp_open(b.ns, a.ip, 80)
        for _ in range(50):
            assert echo(conn, b"x" * 100)
        conn.close()
    assert wait_for(lambda: any(e.tcp_flags & 0x01 for n in pl.nodes for e in n.events))  # FIN seen
    traces = [e for n in pl.nodes for e in n.events if e.type == EVT_TRACE and e.proto == TCP]
    # 100+ packets each way, but events only for the new flow and new TCP flags per direction (each
    # node traces its own pod's side)
    assert 4 <= len(traces) <= 24, len(traces)
    new_flow = [e for e in traces if e.tcp_flags == 0x02]
    assert {e.dir for e in new_flow} == {EGR, ING}
