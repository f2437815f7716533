"""Policy traffic in Kubernetes mode: pods run by kubelets through real CNI chains (upstream ptp or bridge
+ host-local with nodemesh-cni chained, or nodemesh-cni standalone), IPs assigned by the chain and
reported to the API server, identities from the identity service, the watcher reading the API server.

The L3/L4 subset of the policy traffic tests: a CiliumNetworkPolicy lets app=client reach app=server on
TCP 8080 only; app=other is refused (L3), client on another port is refused (L4); the drops are seen as
flows. Client and server on the same node and on different nodes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from cni.netlink import find_host_veth
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.messages.flow import Flow
from nodemesh.messages.identity import IPCacheEntry
from nodemesh.netns import netns_name, netns_path, scope_for
from nodemesh.nodestate import read_datapath_state
from nodemesh.streams import ipcache_key
from services.datapath.maps import NodeMaps
from testkit.kubecluster import KubeCluster
from testkit.kubelet import Sandbox
from testkit.podnet import eventually, servers, tcp_ok
from tests.cni.conftest import MakeCluster

pytestmark = pytest.mark.privileged

CNP = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "server", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
            }
        ],
    },
}


def pod(name: str, app: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "local/python"}]},
    }


async def running(c: KubeCluster, node: str, name: str, timeout: float = 90) -> Sandbox:
    k = c.kubelets[node]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while f"default/{name}" not in k.sandboxes:
        err = k.errors.get(f"default/{name}")
        assert loop.time() < deadline, f"{name} not running on {node}: {err}"
        await asyncio.sleep(0.1)
    return k.sandboxes[f"default/{name}"]


async def api_pod_ip(c: KubeCluster, name: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"{c.api.url}/api/v1/namespaces/default/pods/{name}") as r:
                ip = str(((await r.json()).get("status") or {}).get("podIP") or "")
            if ip:
                return ip
            await asyncio.sleep(0.1)


async def ipcache(bus: Bus, ip: str, timeout: float = 60) -> IPCacheEntry:
    kv = await bus.kv("ipcache")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            entry = await kv.get(ipcache_key(ip))
            if entry.value:
                return decode(entry.value, IPCacheEntry)
        except Exception:
            pass
        assert loop.time() < deadline, f"no ipcache entry for {ip}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("placement", ["same-node", "cross-node"])
@pytest.mark.parametrize("chain", ["ptp", "bridge", "standalone"])
async def test_privileged_l3_l4_allow_and_deny(
    kube: MakeCluster, bus: Bus, chain: str, placement: str
) -> None:
    flows: list[Flow] = []

    async def on_flow(f: Flow, _m: Any) -> None:
        flows.append(f)

    await bus.subscribe(subjects.flows("node-1"), Flow, on_flow)
    c = await kube(chain)
    peer_node = "node-1" if placement == "same-node" else "node-2"
    await c.apply(CNP)  # before the pods: each ADD returns with the pod's policy in place
    await c.apply(pod("server", "server", "node-1"))
    await c.apply(pod("client", "client", peer_node))
    await c.apply(pod("other", "other", peer_node))
    server = await running(c, "node-1", "server")
    client = await running(c, peer_node, "client")
    other = await running(c, peer_node, "other")

    # the IPs the chain assigned are the ones the API server and the identity service know
    for sb, node in ((server, "node-1"), (client, peer_node), (other, peer_node)):
        assert await api_pod_ip(c, sb.ref.name) == sb.ip
        entry = await ipcache(bus, sb.ip)
        assert (entry.pod, entry.node) == (sb.ref.name, node)

    with servers(server.netns, tcp=(8080, 9090)), servers(client.netns, tcp=(8080,)):
        # allowed: client → server:8080 (L3 + L4 match)
        assert await asyncio.to_thread(eventually, tcp_ok, client.netns, server.ip, 8080)
        # other reaches an unselected pod, so its refusal below is the policy's
        assert await asyncio.to_thread(eventually, tcp_ok, other.netns, client.ip, 8080)
        # denied: the right peer on another port (L4), another peer on the right port (L3)
        assert not await asyncio.to_thread(tcp_ok, client.netns, server.ip, 9090)
        assert not await asyncio.to_thread(tcp_ok, other.netns, server.ip, 8080)

    def dropped(src: str, port: int) -> bool:
        return any(
            f.verdict == "DROPPED"
            and f.drop_reason_desc == "POLICY_DENIED"
            and f.ip is not None
            and (f.ip.source, f.ip.destination) == (src, server.ip)
            and f.l4 is not None
            and f.l4.tcp is not None
            and f.l4.tcp.destination_port == port
            for f in flows
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (dropped(client.ip, 9090) and dropped(other.ip, 8080)):
        assert loop.time() < deadline, "the policy drops were not observed as flows on node-1"
        await asyncio.sleep(0.1)

    # the datapaths plumbed exactly the pods the CNI reported, and made no namespace of their own
    for node in c.nodes:
        veths = {await asyncio.to_thread(host_veth, sb) for sb in c.kubelets[node].sandboxes.values()}
        assert set(endpoint_entries(c, node)) == veths
    for sb, node in ((server, "node-1"), (client, peer_node), (other, peer_node)):
        own = netns_path(netns_name(node, "default", sb.ref.name, scope_for(str(c.node_dir(node)))))
        assert not await asyncio.to_thread(os.path.exists, own)  # the name local mode would have made

    # the pod goes from the API: the kubelet's DEL takes its endpoint away
    other_veth = await asyncio.to_thread(host_veth, other)
    await c.delete("Pod", "default", "other")
    while other_veth in endpoint_entries(c, peer_node):
        assert loop.time() < deadline + 30, "the deleted pod's endpoint stayed"
        await asyncio.sleep(0.1)


def host_veth(sb: Sandbox) -> int:
    return find_host_veth(sb.netns, sb.ref.ifname)[0]


def endpoint_entries(c: KubeCluster, node: str) -> set[int]:
    state = read_datapath_state(c.node_dir(node))
    assert state is not None
    maps = NodeMaps(state.pin_dir)
    try:
        return {idx for idx, _ in maps.endpoint_items()}
    finally:
        maps.close()
