"""``nodemesh-cni`` against a real datapath in Kubernetes mode, driven exactly as containerd drives a CNI
chain (testkit.cniruntime): ADD / CHECK / DEL in both modes, DEL twice, DEL while the datapath is down,
ADD before the API server has the pod. The pod's endpoint entry is checked in the node's pinned map
the moment ADD returns: a pod never runs unenforced."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from nodemesh.netns import netns_path
from nodemesh.nodestate import read_datapath_state
from services.datapath.maps import EP_ENFORCE_INGRESS, EndpointInfo, NodeMaps
from testkit.cniruntime import CniPluginError, CniRuntime, PodRef
from testkit.kubecluster import KubeCluster, node_cidr
from tests.cni.conftest import MakeCluster

pytestmark = pytest.mark.privileged

NODE = "node-1"
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


def pod(name: str, labels: dict[str, str], node: str = NODE) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "local/python"}]},
    }


def _netns(name: str) -> None:
    netns.create(name)


def _rm_netns(name: str) -> None:
    with contextlib.suppress(OSError):
        netns.remove(name)


@contextlib.contextmanager
def sandbox_ns() -> Iterator[str]:
    name = f"cni-{uuid.uuid4()}"
    _netns(name)
    try:
        yield name
    finally:
        _rm_netns(name)


def _del_addr(ns: str, ip: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname="eth0")[0], address=ip, prefixlen=32)


def link_index(name: str) -> int | None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        return idx[0] if idx else None


def endpoint_entries(c: KubeCluster, node: str = NODE) -> dict[int, EndpointInfo]:
    state = read_datapath_state(c.node_dir(node))
    assert state is not None
    maps = NodeMaps(state.pin_dir)
    try:
        return dict(maps.endpoint_items())
    finally:
        maps.close()


def host_ifname(c: KubeCluster, result: dict[str, Any]) -> str:
    """The host side of the pod's veth, from the result (the interface without a sandbox)."""
    host = [
        i["name"]
        for i in result["interfaces"]
        if not i.get("sandbox") and i["name"].startswith(("lxc", "veth"))
    ]
    assert len(host) == 1, result
    return str(host[0])


async def created(c: KubeCluster, obj: dict[str, Any]) -> dict[str, Any]:
    return await c.apply(obj)


def ref_for(obj: dict[str, Any], ns_name: str) -> PodRef:
    m = obj["metadata"]
    return PodRef(m["namespace"], m["name"], m["uid"], uuid.uuid4().hex * 2, netns_path(ns_name))


def runtime(c: KubeCluster, node: str = NODE) -> CniRuntime:
    return c.kubelets[node].runtime


@pytest.mark.parametrize(
    ("chain", "bundled"),
    [("ptp", False), ("standalone", False), ("ptp", True), ("standalone", True)],
    ids=["ptp", "standalone", "ptp-bundled", "standalone-bundled"],
)
async def test_privileged_add_check_del_and_del_again(kube: MakeCluster, chain: str, bundled: bool) -> None:
    # bundled: the plugin as the DaemonSet installs it, its own interpreter and libraries (cni/bundle.py)
    c = await kube(chain, nodes=1, run_kubelets=False, cni_bundle=bundled)
    if bundled:
        assert "/opt-nodemesh-cni/" in (c.bin_dir / "nodemesh-cni").read_text()
    await c.apply(CNP)
    server = await created(c, pod("server", {"app": "server"}))
    rt = runtime(c)
    with sandbox_ns() as ns:
        ref = ref_for(server, ns)
        result = await asyncio.to_thread(rt.add, ref)
        # the moment ADD returns: the endpoint entry is there, default-deny on ingress (selected)
        host_if = host_ifname(c, result)
        idx = await asyncio.to_thread(link_index, host_if)
        assert idx is not None
        entries = endpoint_entries(c)
        assert idx in entries and entries[idx].flags & EP_ENFORCE_INGRESS
        assert result["cniVersion"] == "1.0.0"
        ip = ipaddress.ip_interface(result["ips"][0]["address"]).ip
        assert ip in ipaddress.ip_network(node_cidr(1))
        assert str(ip) == ipaddress.IPv4Address(entries[idx].ipv4.to_bytes(4, "little")).compressed
        if chain == "standalone":
            assert result["interfaces"][1] == {
                "name": "eth0", "mac": result["interfaces"][1]["mac"], "sandbox": netns_path(ns)
            }  # fmt: skip
            assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]

        await asyncio.to_thread(rt.check, ref)  # CHECK: veth, address and endpoint entry as ADD left them

        await asyncio.to_thread(rt.delete, ref)
        assert idx not in endpoint_entries(c)
        assert (
            await asyncio.to_thread(link_index, host_if) is None
        )  # standalone: ours; chained: ptp's DEL removed it
        await asyncio.to_thread(rt.delete, ref)  # DEL again (no cached result any more): success
        saved = json.loads((c.node_dir(NODE) / "cni-endpoints.json").read_text())
        assert saved["endpoints"] == []


@pytest.mark.parametrize("chain", ["ptp", "standalone"])
async def test_privileged_del_while_the_datapath_is_down(kube: MakeCluster, chain: str) -> None:
    c = await kube(chain, nodes=1, run_kubelets=False)
    server = await created(c, pod("server", {"app": "server"}))
    rt = runtime(c)
    with sandbox_ns() as ns:
        ref = ref_for(server, ns)
        result = await asyncio.to_thread(rt.add, ref)
        host_if = host_ifname(c, result)
        idx = await asyncio.to_thread(link_index, host_if)
        assert idx is not None and idx in endpoint_entries(c)

        await c.stop_datapath(NODE)
        await asyncio.to_thread(rt.delete, ref)  # succeeds: DEL never fails for a missing datapath
        assert await asyncio.to_thread(link_index, host_if) is None
        with pytest.raises(CniPluginError) as err:  # ADD meanwhile: fail closed, try again later
            with sandbox_ns() as ns2:
                await asyncio.to_thread(rt.add, ref_for(server, ns2))
        assert err.value.code == 11 and err.value.plugin == "nodemesh-cni"
        assert "not reachable" in err.value.msg

        await c.start_datapath(NODE)  # the restarted datapath forgets the endpoint whose veth is gone
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        path = c.node_dir(NODE) / "cni-endpoints.json"
        while json.loads(path.read_text())["endpoints"] or idx in endpoint_entries(c):
            assert loop.time() < deadline, "the stale endpoint was not collected"
            await asyncio.sleep(0.2)


async def test_privileged_add_for_a_pod_the_api_does_not_have_is_refused(kube: MakeCluster) -> None:
    c = await kube("standalone", nodes=1, run_kubelets=False, pod_wait=2.0)
    ghost = {"metadata": {"namespace": "default", "name": "ghost", "uid": str(uuid.uuid4())}}
    rt = runtime(c)
    with sandbox_ns() as ns, pytest.raises(CniPluginError) as err:
        await asyncio.to_thread(rt.add, ref_for(ghost, ns))
    assert err.value.code == 11
    assert "default/ghost is not known" in err.value.msg
    assert not [i for i in endpoint_entries(c)]  # nothing plumbed


async def test_privileged_add_for_a_pod_of_another_node_is_refused(kube: MakeCluster) -> None:
    c = await kube("standalone", nodes=1, run_kubelets=False)
    elsewhere = await created(c, pod("elsewhere", {"app": "server"}, node="node-2"))
    rt = runtime(c)
    with sandbox_ns() as ns, pytest.raises(CniPluginError) as err:
        await asyncio.to_thread(rt.add, ref_for(elsewhere, ns))
    assert err.value.code == 7
    assert "scheduled to node-2, not node-1" in err.value.msg
    assert not endpoint_entries(c)


async def test_privileged_check_reports_a_missing_address(kube: MakeCluster) -> None:
    c = await kube("standalone", nodes=1, run_kubelets=False)
    server = await created(c, pod("server", {"app": "server"}))
    rt = runtime(c)
    with sandbox_ns() as ns:
        ref = ref_for(server, ns)
        result = await asyncio.to_thread(rt.add, ref)
        ip = result["ips"][0]["address"].split("/")[0]
        await asyncio.to_thread(_del_addr, ns, ip)
        with pytest.raises(CniPluginError) as err:
            await asyncio.to_thread(rt.check, ref)
        assert err.value.code == 100 and f"does not have {ip}" in err.value.msg
        await asyncio.to_thread(rt.delete, ref)


async def test_privileged_restarted_datapath_keeps_the_endpoints_the_cni_reported(kube: MakeCluster) -> None:
    c = await kube("ptp", nodes=1, run_kubelets=False)
    await c.apply(CNP)
    server = await created(c, pod("server", {"app": "server"}))
    rt = runtime(c)
    with sandbox_ns() as ns:
        ref = ref_for(server, ns)
        result = await asyncio.to_thread(rt.add, ref)
        idx = await asyncio.to_thread(link_index, host_ifname(c, result))
        await c.stop_datapath(NODE)
        assert endpoint_entries(c)[idx].flags & EP_ENFORCE_INGRESS  # enforcement goes on meanwhile
        await c.start_datapath(NODE)
        await asyncio.to_thread(rt.check, ref)  # the new agent took the endpoint back (CHECK waits for sync)
        assert endpoint_entries(c)[idx].flags & EP_ENFORCE_INGRESS  # and its sweep kept the entry
        await asyncio.to_thread(rt.delete, ref)
        assert idx not in endpoint_entries(c)


SOCKET_PROBE = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"


async def test_privileged_endpoint_socket_is_root_only(kube: MakeCluster) -> None:
    c = await kube("standalone", nodes=1, run_kubelets=False)
    sock = c.cni_socket(NODE)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
    nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        SOCKET_PROBE,
        sock,
    ]
    p = await asyncio.to_thread(subprocess.run, nobody, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "PermissionError" in p.stderr
    p = await asyncio.to_thread(subprocess.run, nobody[4:], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr  # root connects
