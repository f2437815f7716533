"""Agent restart under traffic (pinned maps keep enforcing), mutual-auth drops, two simulated nodes."""

from __future__ import annotations

import time

import pytest

from nodemesh.policy.model import PolicyKey, PolicyValue
from services.datapath.maps import EVT_AUTH_REQUIRED, STAT_AUTH_SUPPRESSED, AuthKey, IPCacheValue
from testkit.datapath_node import TNode, ingress_policy
from testkit.podnet import echo, eventually, servers, tcp_ok, tcp_open, udp_ok, wait_for

from .placement import WHERE, Placed

pytestmark = pytest.mark.privileged

POLICY_DENIED = 133
AUTH_REQUIRED = 189
ING, TCP, UDP = 0, 6, 17


@pytest.mark.parametrize("where", WHERE)
def test_privileged_restart_keeps_enforcing(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    n = pl.node(a)  # the server's node: its agent restarts, its programs enforce
    n.set_policy(a, ingress_policy({PolicyKey(1002, ING, TCP, 80, 16): PolicyValue()}))
    written = {k: v for k, v in n.writer.current.items() if v}
    with servers(a.ns, tcp=(80, 81)):
        conn = tcp_open(b.ns, a.ip, 80)
        assert echo(conn)
        n.stop_agent()  # the agent is gone; programs stay attached, maps stay pinned
        assert echo(conn, b"while-down")
        assert not tcp_ok(b.ns, a.ip, 81)
        n.restart_agent()
        assert n.loader.reused_pins
        assert {
            k: v for k, v in n.writer.current.items() if v
        } == written  # the new agent sees exactly what was enforced
        assert echo(conn, b"after-restart")  # conntrack survived: the allowed flow keeps flowing
        assert eventually(tcp_ok, b.ns, a.ip, 80)
        assert not tcp_ok(b.ns, a.ip, 81)  # denied stays denied
        assert wait_for(lambda: n.drops().get(POLICY_DENIED, 0) > 0)
        conn.close()


@pytest.mark.parametrize("where", WHERE)
def test_privileged_auth_required_then_granted(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    pl = Placed(make_node, where)
    a = pl.pod("a", subnet + "2", 1001, on="x")
    b = pl.pod("b", subnet + "3", 1002, on="y")
    n = pl.node(a)  # the server's node checks the auth map
    n.set_policy(
        a,
        ingress_policy(
            {
                PolicyKey(1002, ING, TCP, 80, 16): PolicyValue(auth_type=1),
                PolicyKey(1002, ING, UDP, 53, 16): PolicyValue(auth_type=1),
            }
        ),
    )
    key = AuthKey(
        local_identity=1001, remote_identity=1002, remote_node_id=pl.node_id_seen_from(a, b), auth_type=1
    )
    with servers(a.ns, tcp=(80,), udp=(53,)):
        assert not tcp_ok(b.ns, a.ip, 80)
        assert wait_for(lambda: n.drops().get(AUTH_REQUIRED, 0) > 0)
        signals = [e for e in n.events if e.type == EVT_AUTH_REQUIRED]
        assert signals and signals[0].dst_identity == 1001 and signals[0].src_identity == 1002
        assert signals[0].auth_type == 1
        # a burst within 100 ms yields at most a few signals: the rest are suppressed in BPF
        before = len([e for e in n.events if e.type == EVT_AUTH_REQUIRED])
        for _ in range(30):
            udp_ok(b.ns, a.ip, 53, timeout=0.001)
        assert wait_for(lambda: n.loader.stat(STAT_AUTH_SUPPRESSED) > 0)
        after = len([e for e in n.events if e.type == EVT_AUTH_REQUIRED])
        assert after - before < 30
        # authd's verdict lands in the auth map: traffic passes
        n.maps.set_auth(key, time.monotonic_ns() + 60 * 10**9)
        assert eventually(tcp_ok, b.ns, a.ip, 80)
        conn = tcp_open(b.ns, a.ip, 80)
        assert echo(conn)
        # expiry (or revocation) cuts even the established flow
        n.maps.set_auth(key, time.monotonic_ns() - 1)
        assert not echo(conn, b"expired")
        conn.close()


def test_privileged_two_nodes_cross_node_policy_and_auth(make_node, subnet) -> None:  # type: ignore[no-untyped-def]
    x: TNode = make_node("x")
    y: TNode = make_node("y")
    a = x.add_pod("a", subnet + "2", 1001)
    b = y.add_pod("b", subnet + "3", 1002)
    # each node knows the other's pod and which node hosts it (agent-local node ids)
    x.maps.set_ipcache(f"{b.ip}/32", IPCacheValue(identity=1002, node_id=7))
    y.maps.set_ipcache(f"{a.ip}/32", IPCacheValue(identity=1001, node_id=5))
    y.set_policy(b, ingress_policy({PolicyKey(1001, ING, TCP, 80, 16): PolicyValue(auth_type=1)}))
    with servers(b.ns, tcp=(80, 81)):
        assert not tcp_ok(a.ns, b.ip, 80)
        assert wait_for(lambda: y.drops().get(AUTH_REQUIRED, 0) > 0)
        sig = next(e for e in y.events if e.type == EVT_AUTH_REQUIRED)
        assert sig.remote_node_id == 5
        assert x.drops() == {}  # the sender's node forwarded; the receiver's node enforced
        y.maps.set_auth(
            AuthKey(local_identity=1002, remote_identity=1001, remote_node_id=5, auth_type=1),
            time.monotonic_ns() + 60 * 10**9,
        )
        assert eventually(tcp_ok, a.ns, b.ip, 80)
        assert not tcp_ok(a.ns, b.ip, 81)
        assert wait_for(lambda: y.drops().get(POLICY_DENIED, 0) > 0)
    # both enforcement points saw the flow: egress trace on x, ingress trace on y
    assert any(e.dir == 1 and e.type == 4 for e in x.events)
    assert any(e.dir == 0 and e.type == 4 for e in y.events)


def test_privileged_pin_with_old_layout_is_replaced(pin_root: str) -> None:
    """A pin from a build with another struct layout must not stop the agent from starting."""
    import os
    import subprocess

    from services.datapath.bpfsys import MapFd
    from services.datapath.loader import Loader

    node_dir = os.path.join(pin_root, "old")
    os.makedirs(node_dir)
    path = os.path.join(node_dir, "nm_config")
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            path,
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "4",
            "name",
            "nm_config",
        ],
        check=True,
    )
    loader = Loader("old", pin_root=pin_root)
    try:
        loader.load()
        m = MapFd.pinned(path)
        assert (m.key_size, m.value_size) == (4, 4)
        m.close()
    finally:
        loader.close()
