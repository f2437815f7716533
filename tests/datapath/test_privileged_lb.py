"""Service load-balancing at the socket, in the real kernel: two datapath services (two simulated
nodes) on a real nats-server, pods in real network namespaces, Services and EndpointSlices on the
K8S stream. Clients run in pods on the backend's node and on the other node, and on the host."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from localcluster.apiserver.controllers.endpointslices import desired_slices
from nodemesh.bus import Bus
from nodemesh.netns import scope_for
from services.datapath.cleanup import cleanup_all
from services.datapath.config import DatapathConfig
from services.datapath.lb import cgroup
from services.datapath.lb.loader import pinned_map_ids
from services.datapath.lb.maps import LbMaps
from services.datapath.lb.model import Backend, Frontend
from testkit.natsserver import NatsServer, free_port
from tests.datapath import k8s
from tests.datapath.lb_helpers import (
    endpoint,
    put_slice,
    service,
    tcp_connect_errno,
    tcp_who,
    udp_who,
    whoami_pod,
)
from tests.datapath.test_privileged_service import Harness

pytestmark = pytest.mark.privileged
SAMPLES = 40  # connections per spread check: all on one of 2 backends by chance is 2^-39


@dataclass
class Cluster:
    x: Harness  # node x: also translates host processes' sockets
    y: Harness
    bus: Bus
    vip: str  # this test's ClusterIP prefix ("10.96.<n>.")
    ips: dict[str, str]  # pod → IP

    def ns(self, pod: str) -> str:
        h = self.x if pod.endswith("-x") else self.y
        return h.netns(pod)

    def node_of(self, pod: str) -> str:
        return (self.x if pod.endswith("-x") else self.y).cfg.node

    def maps(self, h: Harness) -> LbMaps:
        return LbMaps(os.path.join(h.cfg.pin_root, scope_for(h.cfg.data_dir), h.cfg.node))

    def backends_in_map(self, h: Harness, fe: Frontend) -> set[Backend]:
        m = self.maps(h)
        try:
            st = m.read_state()
        finally:
            m.close()
        return {st.backends[b][0] for b in st.reachable(fe) if b in st.backends}


@pytest.fixture
async def cluster(nats_server: NatsServer, bus: Bus, pin_root: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    token = secrets.token_hex(3)
    base = f"10.{200 + int(token[:2], 16) % 50}"
    hs = []
    for i, suffix in enumerate(("x", "y")):
        node, cidr = f"n{token}{suffix}", f"{base}.{(int(token[2:4], 16) + i) % 256}.0/24"
        cfg = DatapathConfig(
            nats_url=nats_server.url, node=node, data_dir=str(tmp_path / "nodes" / node), pin_root=pin_root,
            pod_cidr=cidr, node_ip=f"127.0.50.{241 + i}", log_format="text",
            health_addr=f"127.0.0.1:{free_port()}", lb_host_sockets=(suffix == "x"),
            auth_gate_timeout=0.0,  # the test plays the identity service once pods run: no start gate
        )  # fmt: skip
        await k8s.put_node(bus, node, cfg.node_ip, cidr)
        hs.append(Harness(bus, cfg))
    for h in hs:
        await h.subscribe()
    await k8s.put_obj(bus, {"kind": "Namespace", "metadata": {"name": "default"}})
    c = Cluster(hs[0], hs[1], bus, f"10.96.{int(token[4:6], 16)}.", {})
    try:
        yield c
    finally:
        for h in hs:
            with contextlib.suppress(Exception):
                await h.shutdown()
        cleanup_all(str(tmp_path))


async def start(c: Cluster, pods: list[dict[str, Any]]) -> None:
    """Publish pods (names ending in -x run on x, -y on y), start both agents, wait until ready."""
    for p in pods:
        await k8s.put_obj(c.bus, p)
    await k8s.synced(c.bus)
    c.x.start()
    c.y.start()
    for p in pods:
        name = p["metadata"]["name"]
        h = c.x if name.endswith("-x") else c.y
        c.ips[name] = await k8s.until(lambda h=h, name=name: h.ready_ip(name), 60)


def web_pods(c: Cluster, *names: str, **kw: Any) -> list[dict[str, Any]]:
    out = []
    for n in names:
        node = c.x.cfg.node if n.endswith("-x") else c.y.cfg.node
        labels = {"app": "web"} if n.startswith("web") else {"app": n.rsplit("-", 1)[0]}
        out.append(whoami_pod(n, node, labels, **kw) if n.startswith("web") else k8s.pod(n, node, labels))
    return out


async def who_set(ns: str, ip: str, port: int, n: int = SAMPLES, udp: bool = False) -> set[str]:
    names = set()
    for _ in range(n):
        r = await asyncio.to_thread(udp_who if udp else tcp_who, ns, ip, port)
        assert r is not None, f"no answer from {ip}:{port} ({'udp' if udp else 'tcp'}) in {ns or 'host'}"
        names.add(r[0])
    return names


async def until_who(ns: str, ip: str, port: int, want: set[str], udp: bool = False) -> None:
    async def check() -> bool:
        with contextlib.suppress(AssertionError):
            return await who_set(ns, ip, port, 12, udp) == want
        return False

    await k8s.until(check, 30)


def web_endpoints(c: Cluster, *pods: str, **kw: bool) -> list[dict[str, Any]]:
    return [endpoint(c.ips[p], c.node_of(p), **kw) for p in pods]


# --- ClusterIP ------------------------------------------------------------------------------------
async def test_privileged_lb_cluster_ip_tcp_udp_from_both_nodes_and_host(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "client-x", "client-y"))
    vip = c.vip + "10"
    await k8s.put_obj(c.bus, service("web", vip))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    both = {"web-x", "web-y"}
    for client in ("client-x", "client-y"):  # same node as one backend, other node as the other
        ns = c.ns(client)
        await until_who(ns, vip, 80, both)
        # spread: every ready backend gets connections
        assert await who_set(ns, vip, 80) == both
        # the application sees the ClusterIP as its peer (getpeername4), not the backend
        r = await asyncio.to_thread(tcp_who, ns, vip, 80)
        assert r is not None and r[1] == (vip, 80)
        # UDP, unconnected: each datagram load-balanced; the reply comes from the ClusterIP (recvmsg4)
        assert await who_set(ns, vip, 53, udp=True) == both
        u = await asyncio.to_thread(udp_who, ns, vip, 53)
        assert u is not None and u[1] == (vip, 53)
        # UDP, connected (what resolvers do): peer and reply source are the ClusterIP
        u = await asyncio.to_thread(udp_who, ns, vip, 53, True)
        assert u is not None and u[0] in both and u[1] == (vip, 53)
    # a host process (node x translates the host's sockets)
    assert await who_set("", vip, 80) == both
    assert await who_set("", vip, 53, udp=True) == both
    # metrics: what is programmed, and what the programs did
    text = await c.x.metrics()
    assert "nodemesh_lb_services 1.0" in text and "nodemesh_lb_frontends 2.0" in text
    assert "nodemesh_lb_backends 4.0" in text  # 2 pods x (TCP 8080, UDP 5353)
    assert 'nodemesh_lb_socket_events_total{event="translated"}' in text
    assert "nodemesh_lb_map_update_seconds_count" in text


async def test_privileged_lb_scale_readiness_and_refusal(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "web2-x", "client-x", "client-y"))
    vip = c.vip + "11"
    fe = Frontend(vip, 80, 6)
    await k8s.put_obj(c.bus, service("web", vip))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x", "web-y"})

    # scale down: web-y leaves. Once the map no longer holds it, no new connection reaches it.
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x"))
    gone = Backend(c.ips["web-y"], 8080, 6)
    for h in (c.x, c.y):
        await k8s.until(lambda h=h: gone not in c.backends_in_map(h, fe), 30)
    for client in ("client-x", "client-y"):
        assert await who_set(c.ns(client), vip, 80) == {"web-x"}

    # scale up: a second slice adds web2-x (slices of one Service are merged)
    await put_slice(c.bus, "web", "web-2", web_endpoints(c, "web2-x"))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x", "web2-x"})

    # readiness flips: web-x not ready → only web2-x; back → both again
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", ready=False))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web2-x"})
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x"))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x", "web2-x"})

    # nothing ready: serving + terminating endpoints are used (kube-proxy's fallback)
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", ready=False, terminating=True))
    await put_slice(c.bus, "web", "web-2", web_endpoints(c, "web2-x", ready=False))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x"})

    # no backend at all: refused at once (ECONNREFUSED, not a timeout), TCP and UDP
    await put_slice(c.bus, "web", "web-1", [])
    await k8s.until(lambda: not c.backends_in_map(c.x, fe) and not c.backends_in_map(c.y, fe), 30)
    for ns in (c.ns("client-x"), c.ns("client-y"), ""):
        assert await asyncio.to_thread(tcp_connect_errno, ns, vip, 80) == errno.ECONNREFUSED
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with u, pytest.raises(ConnectionRefusedError):
        u.sendto(b"x", (vip, 53))
    text = await c.x.metrics()
    assert 'nodemesh_lb_socket_events_total{event="no_backend"}' in text
    assert 'nodemesh_lb_socket_events_total{event="inconsistent"} 0.0' in text

    # the Service goes: its frontend leaves the maps, the address is no longer translated
    await k8s.del_obj(c.bus, "Service", "default", "web")
    for h in (c.x, c.y):
        await k8s.until(lambda h=h: Frontend(vip, 80, 6) not in _frontends(c, h), 30)


def _frontends(c: Cluster, h: Harness) -> set[Frontend]:
    m = c.maps(h)
    try:
        return {fe for fe, e in m.read_state().svc.items() if e.zero is not None}
    finally:
        m.close()


# --- ports, affinity, traffic policy, NodePort, headless ------------------------------------------
async def test_privileged_lb_named_target_port_and_session_affinity(cluster: Cluster) -> None:
    c = cluster
    pods = [
        whoami_pod("web-x", c.x.cfg.node, {"app": "web"}, tcp=8080),
        whoami_pod("web-y", c.y.cfg.node, {"app": "web"}, tcp=9090),  # same port name, other number
        *web_pods(c, "client-x", "client-y"),
    ]
    await start(c, pods)
    vip = c.vip + "12"
    svc = service("web", vip, ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}])
    # the EndpointSlice controller's own grouping: one slice per resolved port set
    objs = []
    for p in pods[:2]:
        name = p["metadata"]["name"]
        p = {**p, "status": {"podIP": c.ips[name], "phase": "Running",
                             "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
        p["metadata"] = {**p["metadata"], "uid": name}
        objs.append(p)
    groups = desired_slices(svc, objs)
    assert len(groups) == 2  # 8080 and 9090
    await k8s.put_obj(c.bus, svc)
    for i, ((_family, ports), eps) in enumerate(sorted(groups.items())):
        es = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"web-{i}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": n, "port": port, "protocol": proto} for n, port, proto, _ in ports],
            "endpoints": eps,
        }  # fmt: skip
        await k8s.put_obj(c.bus, es)
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x", "web-y"})

    # sessionAffinity ClientIP: every connection of one client goes to one backend
    svc["spec"]["sessionAffinity"] = "ClientIP"
    svc["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 300}}
    await k8s.put_obj(c.bus, svc)
    fe = Frontend(vip, 80, 6)

    def affinity_on(h: Harness) -> bool:
        m = c.maps(h)
        try:
            z = m.read_state().svc[fe].zero
            return z is not None and z.affinity_timeout == 300
        finally:
            m.close()

    for h in (c.x, c.y):
        await k8s.until(lambda h=h: affinity_on(h), 30)
    for client in ("client-x", "client-y"):
        assert len(await who_set(c.ns(client), vip, 80)) == 1
    assert len(await who_set("", vip, 80)) == 1  # the host is one client too
    text = await c.x.metrics()
    assert 'nodemesh_lb_socket_events_total{event="affinity"}' in text
    # the affinity backend leaves: the client moves to the remaining one at once
    stuck = (await who_set(c.ns("client-x"), vip, 80, 1)).pop()
    other = "web-y" if stuck == "web-x" else "web-x"
    # slices sorted by their port set: web-0 holds web-x (8080), web-1 web-y (9090)
    await put_slice(c.bus, "web", "web-0" if stuck == "web-x" else "web-1", [],
                    tcp=8080 if stuck == "web-x" else 9090)  # fmt: skip
    await until_who(c.ns("client-x"), vip, 80, {other})


async def test_privileged_lb_internal_traffic_policy_local(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "client-x", "client-y"))
    vip = c.vip + "13"
    await k8s.put_obj(c.bus, service("web", vip, internalTrafficPolicy="Local"))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    # each node's pods reach only their own node's backend
    await until_who(c.ns("client-x"), vip, 80, {"web-x"})
    await until_who(c.ns("client-y"), vip, 80, {"web-y"})
    assert await who_set(c.ns("client-x"), vip, 80) == {"web-x"}
    assert await who_set(c.ns("client-y"), vip, 80) == {"web-y"}
    assert await who_set("", vip, 80) == {"web-x"}  # the host is node x's
    # no local backend on y any more: y's pods are refused, x's still served
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x"))
    await k8s.until(lambda: not c.backends_in_map(c.y, Frontend(vip, 80, 6)), 30)
    assert await asyncio.to_thread(tcp_connect_errno, c.ns("client-y"), vip, 80) == errno.ECONNREFUSED
    assert await who_set(c.ns("client-x"), vip, 80) == {"web-x"}


async def test_privileged_lb_node_port_and_headless(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "client-x", "client-y"))
    vip = c.vip + "14"
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30480}]
    await k8s.put_obj(c.bus, service("web", vip, type="NodePort", ports=ports))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    nx, ny = c.x.cfg.node_ip, c.y.cfg.node_ip
    # NodePort on each node's address, from the host and from pods on both nodes
    for ns in ("", c.ns("client-x"), c.ns("client-y")):
        for addr in (nx, ny):
            await until_who(ns, addr, 30480, {"web-x", "web-y"})
    # a host process cannot take a NodePort's port (bind4)
    s = socket.socket()
    with s, pytest.raises(OSError) as exc:
        s.bind(("0.0.0.0", 30480))
    assert exc.value.errno == errno.EADDRINUSE
    # externalTrafficPolicy Local: a node's NodePort reaches that node's backends only
    await k8s.put_obj(c.bus, service("web", vip, type="NodePort", ports=ports, externalTrafficPolicy="Local"))
    for ns in ("", c.ns("client-x"), c.ns("client-y")):
        await until_who(ns, nx, 30480, {"web-x"})
        await until_who(ns, ny, 30480, {"web-y"})
    assert await who_set(c.ns("client-y"), nx, 30480) == {"web-x"}

    # headless: nothing to translate — no frontend in the maps; pods are reached directly
    await k8s.put_obj(c.bus, service("db", "None", selector={"app": "web"}))
    await put_slice(c.bus, "db", "db-1", web_endpoints(c, "web-x", "web-y"))
    await k8s.put_obj(c.bus, service("marker", c.vip + "15"))  # an event after db's, to know db was seen
    await put_slice(c.bus, "marker", "marker-1", web_endpoints(c, "web-x"))
    await until_who(c.ns("client-y"), c.vip + "15", 80, {"web-x"})
    for h in (c.x, c.y):
        fes = _frontends(c, h)
        assert {fe.addr for fe in fes} == {vip, nx, ny, c.vip + "15"}
    r = await asyncio.to_thread(tcp_who, c.ns("client-y"), c.ips["web-x"], 8080)
    assert r is not None and r[0] == "web-x" and r[1] == (c.ips["web-x"], 8080)


# --- a backend on the host (what cluster DNS uses) ------------------------------------------------
async def test_privileged_lb_udp_to_host_local_backend(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "client-x", "client-y"))
    addr = f"169.254.{200 + secrets.randbelow(50)}.{secrets.randbelow(250) + 1}"
    await asyncio.to_thread(_lo_addr, "add", addr)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        srv.bind((addr, 5353))
        srv.settimeout(0.2)
        stop = asyncio.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    d, a = srv.recvfrom(512)
                except (TimeoutError, OSError):
                    continue
                srv.sendto(b"host-dns:" + d, a)

        task = asyncio.create_task(asyncio.to_thread(serve))
        vip = c.vip + "16"
        # a selector-less Service with a hand-made EndpointSlice, like kube-system/kube-dns here
        svc = service("kube-dns", vip, ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])
        del svc["spec"]["selector"]
        await k8s.put_obj(c.bus, svc)
        await put_slice(c.bus, "kube-dns", "kube-dns-1", [endpoint(addr, "")])
        for ns in (c.ns("client-x"), c.ns("client-y"), ""):
            for connected in (False, True):
                r = await k8s.until(
                    lambda ns=ns, connected=connected: asyncio.to_thread(udp_who, ns, vip, 53, connected), 30
                )
                assert r == ("host-dns", (vip, 53))
        stop.set()
        await task
    finally:
        srv.close()
        await asyncio.to_thread(_lo_addr, "del", addr)


def _lo_addr(op: str, addr: str) -> None:
    # pyroute2 runs its own event loop: only from a thread without one
    with IPRoute() as ipr:
        ipr.addr(op, index=ipr.link_lookup(ifname="lo")[0], address=addr, prefixlen=32)


# --- restart and cleanup ---------------------------------------------------------------------------
def _attached_for(pin_dir: str) -> dict[str, int]:
    ids = pinned_map_ids(pin_dir)
    fd = os.open(cgroup.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {
            name: sum(1 for p in cgroup.query(fd, t) if ids & set(p.map_ids))
            for t, name in cgroup.ATTACH_TYPES.items()
        }
    finally:
        os.close(fd)


async def test_privileged_lb_restart_keeps_services_and_cleanup_detaches(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "client-x", "client-y"))
    vip = c.vip + "17"
    await k8s.put_obj(c.bus, service("web", vip))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x", "web-y"})
    pins = {
        h.cfg.node: os.path.join(h.cfg.pin_root, scope_for(h.cfg.data_dir), h.cfg.node) for h in (c.x, c.y)
    }
    for pin in pins.values():
        assert set(_attached_for(pin).values()) == {1}
    conn = socket.socket()  # a host connection through the ClusterIP, open across the restart
    conn.settimeout(5)
    await asyncio.to_thread(conn.connect, (vip, 80))
    assert conn.recv(64).strip() in (b"web-x", b"web-y")

    # agents down: the programs stay attached over the pinned maps, Services keep working
    await c.x.shutdown()
    await c.y.shutdown()
    for client in ("client-x", "client-y"):
        assert await who_set(c.ns(client), vip, 80) == {"web-x", "web-y"}
    # a change while the agents are down is picked up at restart (the full diff on sync)
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x"))
    c.x.status.clear()
    c.y.status.clear()
    c.x.start()
    c.y.start()
    for client in ("client-x", "client-y"):
        await until_who(c.ns(client), vip, 80, {"web-x"})
    # replaced in place, not duplicated; the old connection still flows
    for pin in pins.values():
        assert set(_attached_for(pin).values()) == {1}
    conn.sendall(b"after")
    assert conn.recv(16) == b"after"
    conn.close()

    # cleanup (what `nodemesh down` runs) detaches every program of both nodes
    await c.x.shutdown()
    await c.y.shutdown()
    ids = set().union(*(pinned_map_ids(p) for p in pins.values()))
    cleanup_all(str(Path(c.x.cfg.data_dir).parent.parent))
    fd = os.open(cgroup.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for t in cgroup.ATTACH_TYPES:
            assert not [p for p in cgroup.query(fd, t) if ids & set(p.map_ids)]
    finally:
        os.close(fd)


# --- policy after translation -------------------------------------------------------------------
CNP_WEB = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "web-from-friend", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "friend"}}]}],
    },
}


async def test_privileged_lb_policy_applies_to_the_backend_after_translation(cluster: Cluster) -> None:
    c = cluster
    await k8s.put_obj(c.bus, CNP_WEB)
    await start(c, web_pods(c, "web-x", "friend-x", "friend-y", "stranger-x", "stranger-y"))
    labels = {"web": 70101, "friend": 70102, "stranger": 70103}
    for app, ident in labels.items():
        await k8s.put_identity(c.bus, ident, [f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=default"])
    for pod, ip in c.ips.items():
        app = pod.rsplit("-", 1)[0]
        await k8s.put_ipcache(c.bus, ip, labels[app], c.node_of(pod), "default", pod)
    vip = c.vip + "18"
    await k8s.put_obj(c.bus, service("web", vip))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x"))
    for pod in ("friend-x", "friend-y"):  # allowed: same node and other node
        await until_who(c.ns(pod), vip, 80, {"web-x"})
    for pod in ("stranger-x", "stranger-y"):  # denied on the backend's identity, ClusterIP or not
        assert await asyncio.to_thread(tcp_who, c.ns(pod), vip, 80, 1.0) is None
        assert await asyncio.to_thread(tcp_who, c.ns(pod), c.ips["web-x"], 8080, 1.0) is None
    drops = [
        f for f in c.x.flows if f.verdict == "DROPPED" and f.destination and f.destination.pod_name == "web-x"
    ]
    assert drops and all(f.drop_reason_desc == "POLICY_DENIED" for f in drops)
    assert {f.source.pod_name for f in drops if f.source} >= {"stranger-x", "stranger-y"}


# --- layout --------------------------------------------------------------------------------------
def test_privileged_lb_struct_layouts_match_btf(pin_root: str) -> None:
    """Every struct of bpf/include/nm_lb.h and its ctypes mirror agree (size, field names, offsets)."""
    import ctypes
    import json
    import subprocess

    from services.datapath.lb.loader import SockLoader
    from services.datapath.lb.maps import LAYOUT_STRUCTS

    loader = SockLoader(os.path.join(pin_root, "layout"))
    loader.load()  # compiled and loaded, not attached
    try:
        fd = loader.fds[10]
        prog_id = str(cgroup.prog_info(fd).id)
        btf_id = json.loads(subprocess.check_output(["bpftool", "prog", "show", "id", prog_id, "-j"]))[
            "btf_id"
        ]
        btf = json.loads(subprocess.check_output(["bpftool", "btf", "dump", "id", str(btf_id), "-j"]))
        structs = {t["name"]: t for t in btf["types"] if t.get("kind") == "STRUCT" and t.get("name")}
        for cname, pytype in LAYOUT_STRUCTS.items():
            assert cname in structs, f"struct {cname} not in the program's BTF"
            cs = structs[cname]
            assert cs["size"] == ctypes.sizeof(pytype), (
                f"{cname}: C {cs['size']}, Python {ctypes.sizeof(pytype)}"
            )
            c_fields = [(m["name"], m["bits_offset"] // 8) for m in cs["members"]]
            py_fields = [(name, getattr(pytype, name).offset) for name, *_ in pytype._fields_]
            assert c_fields == py_fields, f"{cname}: C {c_fields} != Python {py_fields}"
    finally:
        loader.close()


def test_privileged_lb_crashed_start_replaced_and_orphans_detached(pin_root: str) -> None:
    """A previous run's programs (still attached, as after a crash) are replaced in place, never
    doubled — also when two copies were left; programs whose pins were removed by hand are found
    and detached by the cleanup's orphan sweep."""
    import shutil

    from services.datapath.lb.loader import SockLoader, detach_node, detach_orphans

    pin = os.path.join(pin_root, "crash")
    first = SockLoader(pin)
    first.load()
    first.attach()
    second = SockLoader(pin)  # a crashed start: loaded and attached, never cleaned up
    second.load()
    fd = os.open(cgroup.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for t, prog_fd in second.fds.items():  # force a duplicate, as an interrupted attach could
            cgroup.attach(fd, prog_fd, t)
    finally:
        os.close(fd)
    assert set(_attached_for(pin).values()) == {2}
    third = SockLoader(pin)
    third.load()
    assert third.attach() == {"replaced": 5, "duplicates": 5}
    assert set(_attached_for(pin).values()) == {1}
    for ld in (first, second, third):
        ld.close()
    assert detach_node(pin) == 5
    assert set(_attached_for(pin).values()) == {0}

    # orphans: attached, but the pin directory is gone
    orphan = SockLoader(os.path.join(pin_root, "orphan"))
    orphan.load()
    orphan.attach()
    ids = pinned_map_ids(orphan.pin_dir)
    orphan.close()
    shutil.rmtree(orphan.pin_dir)
    fd = os.open(cgroup.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [p for p in cgroup.query(fd, 10) if ids & set(p.map_ids)]
        assert detach_orphans() == 5
        for t in cgroup.ATTACH_TYPES:
            assert not [p for p in cgroup.query(fd, t) if ids & set(p.map_ids)]
    finally:
        os.close(fd)
