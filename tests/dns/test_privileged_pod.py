"""From inside pod network namespaces: queries reach the DNS server on local mode's address
(169.254.20.10 on lo) through the pod's veth and default route, from pods of two nodes; and a pod's
process sees the resolv.conf kubelet would write (``cat /etc/resolv.conf`` run by the pod runner).

Privileged: run under ``flock /tmp/nodemesh-priv.lock`` (it binds 169.254.20.10:53, which a running
local cluster would hold)."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from localcluster.dnsaddr import add_dns_address, remove_dns_address
from localcluster.layout import DNS_ADDR
from nodemesh.bus import Bus
from nodemesh.netns import host_ifname, netns_name
from services.datapath.pods.netns import create_pod_netns, delete_pod_netns, netns_socket
from services.datapath.pods.resolvconf import PodDns
from services.datapath.pods.runner import PodRunner
from testkit.k8sobjects import endpoint, endpoint_slice, namespace, service
from testkit.natsserver import NatsServer
from tests.dns.harness import Running, addresses, dns_service, eventually, mark_synced, put

pytestmark = pytest.mark.privileged


@pytest.fixture
def dns_address() -> Iterator[str]:
    add_dns_address(DNS_ADDR)
    try:
        yield DNS_ADDR
    finally:
        remove_dns_address(DNS_ADDR)


@pytest.fixture
def pods() -> Iterator[dict[str, tuple[str, str]]]:
    """Two pods on two simulated nodes (their own /24s): node → (netns, pod IP)."""
    token = secrets.token_hex(3)
    a, b = random.sample(range(200, 250), 2)
    made: dict[str, tuple[str, str]] = {}
    links: list[tuple[str, str]] = []
    try:
        for node, prefix in ((f"a{token}", f"10.{a}.{random.randint(0, 255)}."), (f"b{token}", f"10.{b}.7.")):
            ns, ifname = netns_name(node, "demo", "client"), host_ifname(node, "demo", "client")
            links.append((ns, ifname))
            create_pod_netns(ns, ifname, prefix + "5")
            made[node] = (ns, prefix + "5")
        yield made
    finally:
        for ns, ifname in links:
            delete_pod_netns(ns, ifname)


@pytest.fixture
async def server(nats_server: NatsServer, bus: Bus, dns_address: str) -> AsyncIterator[Running]:
    for obj in (
        namespace("demo"),
        service("echo-b", ip="10.96.0.20", ports=[("http", 80, "TCP")]),
        service("db", ip=None),
        endpoint_slice("db-1", "db", [endpoint("10.244.1.5", hostname="db-0")]),
    ):
        await put(bus, obj)
    await mark_synced(bus)
    async with dns_service(nats_server.url, listen=f"{dns_address}:53", upstreams="127.0.0.1:9") as run:

        async def ready() -> bool:
            return (await run.get("/readyz"))[0] == 200

        await eventually(ready, what="dns ready")
        yield run


def _ask_from_pod(netns: str, server: str, name: str, rdtype: str, tcp: bool) -> dns.message.Message:
    """A query sent from a socket inside the pod's network namespace (blocking; run in a thread)."""
    q = dns.message.make_query(name, rdtype)
    s = netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with s:
        if tcp:
            s.settimeout(5)
            s.connect((server, 53))
            s.setblocking(False)
            return dns.query.tcp(q, server, timeout=5, sock=s)
        s.setblocking(False)
        return dns.query.udp(q, server, timeout=5, sock=s)


async def test_privileged_pods_on_two_nodes_query_the_dns_address(
    server: Running, pods: dict[str, tuple[str, str]]
) -> None:
    assert server.addr == (DNS_ADDR, 53)
    for node, (netns, _ip) in pods.items():
        for tcp in (False, True):
            resp = await asyncio.to_thread(
                _ask_from_pod, netns, DNS_ADDR, "echo-b.demo.svc.cluster.local", "A", tcp
            )
            assert addresses(resp) == ["10.96.0.20"], (node, tcp)
            srv = await asyncio.to_thread(
                _ask_from_pod, netns, DNS_ADDR, "_http._tcp.echo-b.demo.svc.cluster.local", "SRV", tcp
            )
            assert addresses(srv, "SRV") == ["0 100 80 echo-b.demo.svc.cluster.local."], (node, tcp)
        host = await asyncio.to_thread(
            _ask_from_pod, netns, DNS_ADDR, "db-0.db.demo.svc.cluster.local", "A", False
        )
        assert addresses(host) == ["10.244.1.5"]
        nx = await asyncio.to_thread(
            _ask_from_pod, netns, DNS_ADDR, "nope.demo.svc.cluster.local", "A", False
        )
        assert nx.rcode() == dns.rcode.NXDOMAIN


async def _run_pod(netns: str, ip: str, pod: dict[str, Any], log_dir: Path) -> tuple[str, PodRunner]:
    """Run ``pod`` (restartPolicy Never) to completion with the runner; its output and the runner."""
    statuses: list[dict[str, Any]] = []

    async def report(status: dict[str, Any]) -> None:
        statuses.append(status)

    runner = PodRunner(pod, netns, ip, "node-1", log_dir, report, PodDns("10.96.0.10", "cluster.local"))
    runner.start()

    async def done() -> bool:
        return any(s["phase"] in ("Succeeded", "Failed") for s in statuses)

    await eventually(done, what="pod finished")
    assert statuses[-1]["phase"] == "Succeeded", (statuses[-1], runner.log_path.read_text())
    return runner.log_path.read_text(), runner


def _host_resolv_conf() -> str:
    with open("/etc/resolv.conf") as fh:
        return fh.read()


def _cat_pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "demo", "uid": secrets.token_hex(8)},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox", "command": ["cat", "/etc/resolv.conf"]}],
            **spec,
        },
    }


async def test_privileged_pod_process_sees_the_kubelet_resolv_conf(
    pods: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    host_before = _host_resolv_conf()
    netns, ip = next(iter(pods.values()))
    seen, runner = await _run_pod(netns, ip, _cat_pod("cat"), tmp_path)
    assert seen == (
        "search demo.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )
    assert runner.resolv_path.exists()
    await runner.stop()
    assert not runner.resolv_path.exists()  # removed with the pod
    assert _host_resolv_conf() == host_before  # the bind mount never reached the host

    default, runner = await _run_pod(netns, ip, _cat_pod("host", dnsPolicy="Default"), tmp_path)
    assert default == host_before
    await runner.stop()
