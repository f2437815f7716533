"""L7 HTTP policy end to end: CiliumNetworkPolicy ``rules.http`` → the policy engine's map entries in
the real kernel (the programs redirect the flow) → the translated L7 policy listener in a real
Envoy (RBAC: 403 "Access denied" for what the rules do not allow) → the real server in the
destination pod's netns, which sees the client's own address (source kept by original_src)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conformance.envoy import Envoy
from conformance.envoyfs import FileXds, bootstrap
from nodemesh.messages.flow import Flow
from nodemesh.policy.model import Endpoint, ProxyPorts
from nodemesh.policy.resolve import resolve
from services.datapath import l7redirect
from services.datapath.accesslog.server import AccessLogServer
from services.datapath.pods.netns import netns_socket
from services.xds.bootstrap import ALS_CLUSTER, render_bootstrap
from services.xds.translate import Translation
from services.xds.translate.l7policy import L7PolicyInput, l7_policy
from testkit.datapath_node import TNode, TPod

pytestmark = pytest.mark.privileged

ID_B, ID_A = 70001, 70002
IDENTITIES = {
    ID_B: ["k8s:app=b", "k8s:io.kubernetes.pod.namespace=default"],
    ID_A: ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=default"],
}


def cnp(direction: str, l7: bool) -> dict[str, Any]:
    """Pod a → pod b: port 8080 with `GET /public.*` (or plain L4 when not ``l7``), 9090 plain L4."""
    http = {"rules": {"http": [{"method": "GET", "path": "/public.*"}]}} if l7 else {}
    port_8080 = {"ports": [{"port": "8080", "protocol": "TCP"}], **http}
    port_9090 = {"ports": [{"port": "9090", "protocol": "TCP"}]}
    if direction == "ingress":
        sel, peer_key, section = "b", "fromEndpoints", "ingress"
        peer = "a"
    else:
        sel, peer_key, section = "a", "toEndpoints", "egress"
        peer = "b"
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "l7", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": sel}},
            section: [{peer_key: [{"matchLabels": {"app": peer}}], "toPorts": [port_8080, port_9090]}],
        },
    }


def k8s_pod(name: str, ip: str, node: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": ip},
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps(
            {
                "server": "b",
                "path": self.path,
                "client": self.client_address[0],
                "via_envoy": "x-request-id" in self.headers,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def http_servers(ns: str, ports: tuple[int, ...]) -> Iterator[None]:
    """HTTP servers in the pod's netns (sockets created there, served by threads here)."""
    servers = []
    for port in ports:
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = netns_socket(ns)
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.server_bind()
        srv.server_activate()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        servers.append(srv)
    try:
        yield
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def request(ns: str, ip: str, port: int, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP/1.1 request from inside ``ns``; (status, body), (0, error) when it fails."""
    s = netns_socket(ns)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError as e:
        return 0, str(e)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body.decode(errors="replace")


async def until(fn: Any, ok: Any, timeout: float = 30.0) -> Any:
    """Call ``fn`` (in a thread) until ``ok(result)``; the last result either way."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await asyncio.to_thread(fn)
        if ok(got) or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


class Cluster:
    """One node: its programs and pods, its Envoy fed through xDS files, the L7 translation."""

    def __init__(self, node: TNode, a: TPod, b: TPod, xds: FileXds, envoy: Envoy, addr: str) -> None:
        self.node, self.a, self.b, self.xds, self.envoy, self.addr = node, a, b, xds, envoy, addr
        self.l7_flows: list[Flow] = []  # from the node's access log receiver

    async def apply(self, policy: dict[str, Any]) -> None:
        """What the datapath and xds do with one policy: maps in the kernel, listeners in Envoy."""
        eps = [Endpoint(key=f"default/{p.name}", identity=p.identity) for p in (self.a, self.b)]
        res = resolve([policy], eps, IDENTITIES, proxy_ports=ProxyPorts())
        assert not res.errors
        for p in (self.a, self.b):
            self.node.set_policy(p, res.policies[f"default/{p.name}"])
        self.node.maps.bump_policy_revision()
        pods = [k8s_pod(p.name, p.ip, self.node.name) for p in (self.a, self.b)]
        out = l7_policy(
            L7PolicyInput(
                policies=[policy],
                pods=pods,
                namespaces=[{"metadata": {"name": "default"}}],
                node_addresses={self.node.name: self.addr},
                access_log_cluster=ALS_CLUSTER,
            )
        )
        t = Translation()
        t.node_resources = out
        version = self.xds.write(t, self.node.name)
        assert await self.xds.wait_applied(self.envoy, version), self.envoy.log_tail()

    def get(self, method: str, path: str, port: int = 8080) -> tuple[int, str]:
        return request(self.a.ns, self.b.ip, port, method, path)


@pytest.fixture
async def cluster(make_node: Any, subnet: str, tmp_path: Path) -> Any:
    # pyroute2 runs its own event loop: netlink work happens in a thread
    added_route = not await asyncio.to_thread(l7redirect.proxy_route_present)
    await asyncio.to_thread(l7redirect.ensure_proxy_route)
    node: TNode = await asyncio.to_thread(make_node, "l")
    # the proxy address: a random loopback address, so concurrent runs never share a listener
    addr = f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    l7redirect.configure(node.maps, addr, ProxyPorts())
    a = await asyncio.to_thread(node.add_pod, "a", subnet + "2", ID_A)
    b = await asyncio.to_thread(node.add_pod, "b", subnet + "3", ID_B)
    xds = FileXds(tmp_path / "xds")
    flows: list[Flow] = []

    async def publish(_subject: str, f: Flow) -> None:
        flows.append(f)

    als = AccessLogServer(node.name, publish, CollectorRegistry(), lambda _ip: None)
    als_port = await als.start(0)
    boot = bootstrap(xds.dir, node.name)
    # the node's access log cluster, as the real bootstrap has it
    rendered = render_bootstrap(node.name, "127.0.0.1", 1, 0, als_port=als_port)
    boot["static_resources"] = {
        "clusters": [c for c in rendered["static_resources"]["clusters"] if c["name"] == ALS_CLUSTER]
    }
    envoy = Envoy(boot, name="l7").start()
    try:
        await envoy.wait_admin()
        with http_servers(b.ns, (8080, 9090, 7070)):
            c = Cluster(node, a, b, xds, envoy, addr)
            c.l7_flows = flows
            yield c
    finally:
        envoy.stop()
        await als.stop(0)
        if added_route:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(l7redirect.remove_proxy_route)


@pytest.mark.parametrize("direction", ["ingress", "egress"])
async def test_privileged_http_rules_enforced_by_envoy(cluster: Cluster, direction: str) -> None:
    c = cluster
    await c.apply(cnp(direction, l7=True))
    status, body = await until(lambda: c.get("GET", "/public/x"), lambda r: r[0] == 200)
    assert status == 200, (body, c.node.drops(), c.envoy.log_tail())
    seen = json.loads(body)
    # the server answered, through the proxy, and saw the client's own address (identity kept)
    assert seen == {"server": "b", "path": "/public/x", "client": c.a.ip, "via_envoy": True}
    status, body = await asyncio.to_thread(c.get, "GET", "/private")
    assert (status, body) == (403, "Access denied\r\n")
    assert (await asyncio.to_thread(c.get, "POST", "/public"))[0] == 403
    # the port without L7 rules is plain L4: straight to the server
    status, body = await asyncio.to_thread(c.get, "GET", "/private", 9090)
    assert status == 200 and json.loads(body)["via_envoy"] is False
    # the L4 events of the redirected flow carry the proxy port (verdict REDIRECTED)
    port = ProxyPorts().ingress if direction == "ingress" else ProxyPorts().egress
    assert any(socket.ntohs(e.proxy_port) == port and socket.ntohs(e.dport) == 8080 for e in c.node.events)
    assert not any(socket.ntohs(e.proxy_port) and socket.ntohs(e.dport) == 9090 for e in c.node.events)
    assert not c.node.drops()
    # the L7 flows: the allowed request forwarded, the denied ones DROPPED with Envoy's 403

    def l7(path: str, method: str) -> Flow | None:
        return next(
            (
                f
                for f in c.l7_flows
                if f.l7
                and f.l7.http
                and f.l7.http.code
                and f.l7.http.method == method
                and f.l7.http.url.endswith(path)
            ),
            None,
        )

    async def logged() -> bool:
        return all(l7(p, m) for p, m in (("/public/x", "GET"), ("/private", "GET"), ("/public", "POST")))

    deadline = asyncio.get_running_loop().time() + 30
    while not await logged() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    ok, denied, post = l7("/public/x", "GET"), l7("/private", "GET"), l7("/public", "POST")
    assert ok and ok.verdict == "FORWARDED" and ok.l7 and ok.l7.http and ok.l7.http.code == 200, c.l7_flows
    for f in (denied, post):
        assert f and f.verdict == "DROPPED" and f.l7 and f.l7.http and f.l7.http.code == 403

    # removing the L7 rule restores plain L4 behaviour for new connections
    await c.apply(cnp(direction, l7=False))
    status, body = await until(lambda: c.get("GET", "/private"), lambda r: r[0] == 200)
    assert status == 200 and json.loads(body)["via_envoy"] is False
    # and a port the policy does not allow is still dropped at L4 (a server listens there)
    assert (await asyncio.to_thread(request, c.a.ns, c.b.ip, 7070, "GET", "/", 1.0))[0] == 0
    assert c.node.drops().get(133, 0) >= 1


async def test_privileged_no_proxy_listening_fails_closed(cluster: Cluster) -> None:
    """The policy redirects, but no Envoy listener is there (yet): the flow is dropped
    (SOCKET_LOOKUP_FAILED, 178), never delivered past the L7 rules."""
    c = cluster
    eps = [Endpoint(key=f"default/{p.name}", identity=p.identity) for p in (c.a, c.b)]
    res = resolve([cnp("ingress", l7=True)], eps, IDENTITIES, proxy_ports=ProxyPorts())
    for p in (c.a, c.b):
        c.node.set_policy(p, res.policies[f"default/{p.name}"])
    status, _ = await asyncio.to_thread(request, c.a.ns, c.b.ip, 8080, "GET", "/public/x", 1.0)
    assert status == 0
    assert c.node.drops().get(178, 0) >= 1
    # the plain L4 port still works
    assert (await asyncio.to_thread(c.get, "GET", "/x", 9090))[0] == 200
