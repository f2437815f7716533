"""authd with the real BPF datapath on two simulated nodes (the datapath driven as its own tests
drive it, plus the verdict/signal glue its service has): a new pod's first TCP connection and first
UDP datagram pass with no auth-required drop when auth is proactive; reactive auth drops first and
the retransmit gets through. The server is on node y; the client on node x (cross-node) or on y
(same-node)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nodemesh.policy.model import PolicyKey, PolicyValue
from services.datapath.maps import IPCacheValue
from testkit.authd_cluster import Cluster, poll
from testkit.authd_datapath import NODE_IDS, Glue
from testkit.datapath_node import TNode, ingress_policy
from testkit.placement import PLACEMENTS, SAME_NODE
from testkit.podnet import servers, tcp_ok, udp_ok

pytestmark = pytest.mark.privileged

AUTH_REQUIRED = 189
ING, TCP, UDP = 0, 6, 17
SPEC = {
    "endpointSelector": {"matchLabels": {"app": "server"}},
    "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "authentication": {"mode": "required"}}
    ],
}


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[TNode, TNode, str]]:
    tok = secrets.token_hex(3)
    pin_root = f"/sys/fs/bpf/nmauthd-{os.getpid()}-{tok}"
    os.makedirs(pin_root)
    loop = asyncio.get_running_loop()
    made: list[TNode] = []
    try:
        for s in ("x", "y"):  # pyroute2 and BCC are synchronous: keep them off the loop's thread
            made.append(await loop.run_in_executor(None, TNode(f"a{tok}{s}", pin_root).start))
        yield made[0], made[1], f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}."
    finally:
        for n in made:
            await loop.run_in_executor(None, n.close)
        shutil.rmtree(pin_root, ignore_errors=True)


def _client_node(placement: str) -> str:
    return "node-y" if placement == SAME_NODE else "node-x"


async def _setup(
    c: Cluster, x: TNode, y: TNode, net: str, ns: str, proactive: bool, placement: str
) -> tuple[Any, str, int, asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    await c.add_node("node-x", "127.0.50.1")
    await c.add_node("node-y", "127.0.50.2")
    if proactive:
        await c.put_policy("auth", SPEC, ns=ns)
    sid, cid, sip, cip = 1201, 1202, f"{net}10", f"{net}20"
    await c.add_identity(sid, "server", ns=ns)
    await c.add_pod(sip, sid, "node-y", ns=ns)
    server = await loop.run_in_executor(None, y.add_pod, "srv", sip, sid)
    x.maps.set_ipcache(f"{sip}/32", IPCacheValue(identity=sid, node_id=NODE_IDS["node-y"]))
    # y's policy: ingress from the client identity on TCP 80 and UDP 53, authentication required
    pol = ingress_policy(
        {
            PolicyKey(cid, ING, TCP, 80, 16): PolicyValue(auth_type=1),
            PolicyKey(cid, ING, UDP, 53, 16): PolicyValue(auth_type=1),
        }
    )
    await loop.run_in_executor(None, y.set_policy, server, pol)
    if placement != SAME_NODE:  # a local pod's entry (node id 0) comes with its add_pod
        y.maps.set_ipcache(f"{cip}/32", IPCacheValue(identity=cid, node_id=NODE_IDS["node-x"]))
    glue = Glue(c, y)
    await glue.start()
    await c.start_authd("node-x", proactive=proactive)
    await c.start_authd("node-y", proactive=proactive)
    pump = asyncio.create_task(glue.pump())
    # the identity service's writes for the new client pod (before its netns exists)
    await c.add_identity(cid, "client", ns=ns)
    await c.add_pod(cip, cid, _client_node(placement), ns=ns)
    return server, cip, cid, pump


def _auth_entry(y: TNode, cid: int, placement: str) -> bool:
    want = (1201, cid, 0 if placement == SAME_NODE else NODE_IDS["node-x"], 1)
    return any(
        (k.local_identity, k.remote_identity, k.remote_node_id, k.auth_type) == want
        for k, _ in y.maps.auth_items()
    )


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_privileged_proactive_first_packets_pass(
    cluster: Cluster, nodes: tuple[TNode, TNode, str], placement: str
) -> None:
    x, y, net = nodes
    loop = asyncio.get_running_loop()
    server, cip, cid, pump = await _setup(cluster, x, y, net, "pro", True, placement)
    cnode = y if placement == SAME_NODE else x
    try:
        # authenticated ahead of traffic: the entry is in y's BPF auth map before the pod even exists
        await poll(lambda: _auth_entry(y, cid, placement), 30, "the proactive verdict in y's auth map")
        client = await loop.run_in_executor(None, cnode.add_pod, "cli", cip, cid)
        with servers(server.ns, tcp=(80,), udp=(53,)):
            # short timeouts: a dropped first SYN would need the 1 s retransmit
            assert await loop.run_in_executor(None, tcp_ok, client.ns, server.ip, 80, 0.5)
            assert await loop.run_in_executor(None, udp_ok, client.ns, server.ip, 53, 0.5)
        assert y.drops().get(AUTH_REQUIRED, 0) == 0, "no packet waited for authentication"
        assert not cluster.seen.required
    finally:
        pump.cancel()


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_privileged_reactive_drops_first_then_passes(
    cluster: Cluster, nodes: tuple[TNode, TNode, str], placement: str
) -> None:
    x, y, net = nodes
    loop = asyncio.get_running_loop()
    server, cip, cid, pump = await _setup(cluster, x, y, net, "rea", False, placement)
    cnode = y if placement == SAME_NODE else x
    try:
        cname = _client_node(placement)
        await poll(lambda: cluster.manager(cname).store.get(cid), 30, "the client's SVID on its node")
        client = await loop.run_in_executor(None, cnode.add_pod, "cli", cip, cid)
        with servers(server.ns, tcp=(80,)):
            # the first SYN is dropped, authd authenticates, the retransmit (~1 s) passes
            assert await loop.run_in_executor(None, tcp_ok, client.ns, server.ip, 80, 5.0)
        assert y.drops().get(AUTH_REQUIRED, 0) >= 1
        assert _auth_entry(y, cid, placement)
        assert cluster.seen.required, "the datapath signalled authd"
    finally:
        pump.cancel()
