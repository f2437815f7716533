"""L7 HTTP policy end to end: CiliumNetworkPolicy ``rules.http`` → the policy engine's map entries in
the real kernel (the programs redirect the flow) → the translated L7 policy listener in a real
Envoy (RBAC: 403 "Access denied" for what the rules do not allow) → the real server in the
destination pod's netns, which sees the client's own address (source kept by original_src)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
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
from nodemesh.policy.visibility import ANNOTATION, pod_visibility, with_visibility
from services.datapath import l7redirect
from services.datapath.accesslog.server import AccessLogServer
from services.datapath.pods.netns import netns_socket
from services.xds.bootstrap import ALS_CLUSTER, render_bootstrap
from services.xds.translate import Translation
from services.xds.translate.l7policy import L7PolicyInput, l7_policy
from testkit.datapath_node import TNode, TPod
from testkit.placement import PLACEMENTS, node_count, share_ipcache, spread

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


def k8s_pod(name: str, ip: str, node: str, visibility: str = "") -> dict[str, Any]:
    ann = {ANNOTATION: visibility} if visibility else {}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}, "annotations": ann},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": ip},
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: many requests on one connection

    def _answer(self) -> None:
        # read the whole request body; ``/big<N>`` answers with N bytes of padding
        received = len(self.rfile.read(int(self.headers.get("content-length") or 0)))
        pad = int(self.path.rpartition("/big")[2]) if "/big" in self.path else 0
        body = json.dumps(
            {
                "server": "b",
                "path": self.path,
                "client": self.client_address[0],
                "via_envoy": "x-request-id" in self.headers,
                "received": received,
                "pad": "x" * pad,
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


def keepalive(
    ns: str, ip: str, calls: list[tuple[str, str, bytes]], timeout: float = 10.0
) -> list[tuple[int, bytes]]:
    """Requests (method, path, body) on ONE connection from inside ``ns``: [(status, body)]; raises
    if the connection breaks (a new connection would hide a proxy that judged only the first)."""
    conn = http.client.HTTPConnection(ip, 8080, timeout=timeout)
    s = netns_socket(ns)
    s.settimeout(timeout)
    s.connect((ip, 8080))
    conn.sock = s
    local = s.getsockname()
    out = []
    try:
        for method, path, body in calls:
            conn.request(method, path, body=body, headers={"Host": "b"})
            r = conn.getresponse()
            out.append((r.status, r.read()))
            assert conn.sock is s and s.getsockname() == local, "the connection was replaced"
    finally:
        conn.close()
    return out


async def until(fn: Any, ok: Any, timeout: float = 30.0) -> Any:
    """Call ``fn`` (in a thread) until ``ok(result)``; the last result either way."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await asyncio.to_thread(fn)
        if ok(got) or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


class Node:
    """One simulated node: its programs, its Envoy fed through xDS files, its proxy address."""

    def __init__(self, node: TNode, xds: FileXds, envoy: Envoy, addr: str) -> None:
        self.node, self.xds, self.envoy, self.addr = node, xds, envoy, addr

    @property
    def name(self) -> str:
        return self.node.name


class Cluster:
    """Pod a (the client) and pod b (the server) on the nodes the placement chose; the L7 translation
    for every node."""

    def __init__(self, nodes: list[Node], a: TPod, b: TPod, a_node: Node, b_node: Node) -> None:
        self.nodes, self.a, self.b, self.a_node, self.b_node = nodes, a, b, a_node, b_node
        self.l7_flows: list[Flow] = []  # from the nodes' access log receivers
        self.registries: list[CollectorRegistry] = []  # their metrics (hubble_http_*)

    @property
    def node(self) -> TNode:
        """The server's node (single-node tests)."""
        return self.b_node.node

    @property
    def envoy(self) -> Envoy:
        return self.b_node.envoy

    def node_of(self, direction: str) -> TNode:
        """The node that enforces ``direction``'s rules: the client's for egress, the server's for ingress."""
        return (self.a_node if direction == "egress" else self.b_node).node

    def drops(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for n in self.nodes:
            for k, v in n.node.drops().items():
                out[k] = out.get(k, 0) + v
        return out

    def logs(self) -> str:
        return "\n".join(n.envoy.log_tail() for n in self.nodes)

    async def apply(self, *policies: dict[str, Any], visibility: dict[str, str] | None = None) -> None:
        """What the datapath and xds do with the policies and the pods' proxy-visibility annotations
        (pod name → value): maps in the kernel, listeners in Envoy."""
        vis = visibility or {}
        eps = [Endpoint(key=f"default/{p.name}", identity=p.identity) for p in (self.a, self.b)]
        res = resolve(list(policies), eps, IDENTITIES, proxy_ports=ProxyPorts())
        assert not res.errors
        pods = [k8s_pod(p.name, p.ip, n.name, vis.get(p.name, "")) for p, n in self.placed()]
        for (p, n), obj in zip(self.placed(), pods, strict=True):
            wanted, errors = pod_visibility(obj)
            assert not errors
            n.node.set_policy(p, with_visibility(res.policies[f"default/{p.name}"], wanted, ProxyPorts()))
        for n in self.nodes:
            n.node.maps.bump_policy_revision()
        out = l7_policy(
            L7PolicyInput(
                policies=list(policies),
                pods=pods,
                namespaces=[{"metadata": {"name": "default"}}],
                node_addresses={n.name: n.addr for n in self.nodes},
                access_log_cluster=ALS_CLUSTER,
            )
        )
        t = Translation()
        t.node_resources = out
        for n in self.nodes:
            version = n.xds.write(t, n.name)
            assert await n.xds.wait_applied(n.envoy, version), n.envoy.log_tail()

    def get(self, method: str, path: str, port: int = 8080) -> tuple[int, str]:
        return request(self.a.ns, self.b.ip, port, method, path)

    def placed(self) -> list[tuple[TPod, Node]]:
        return [(self.a, self.a_node), (self.b, self.b_node)]


@pytest.fixture(params=PLACEMENTS)
async def cluster(request: Any, make_node: Any, subnet: str, tmp_path: Path) -> Any:
    placement: str = request.param
    # pyroute2 runs its own event loop: netlink work happens in a thread
    added_route = not await asyncio.to_thread(l7redirect.proxy_route_present)
    await asyncio.to_thread(l7redirect.ensure_proxy_route)
    flows: list[Flow] = []

    async def publish(_subject: str, f: Flow) -> None:
        flows.append(f)

    nodes: list[Node] = []
    receivers: list[AccessLogServer] = []
    registries: list[CollectorRegistry] = []
    try:
        for i in range(node_count(placement)):
            tnode: TNode = await asyncio.to_thread(make_node, str(i + 1))
            # the proxy address: a random loopback address, so concurrent runs never share a listener
            addr = f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
            l7redirect.configure(tnode.maps, addr, ProxyPorts())
            registry = CollectorRegistry()
            registries.append(registry)
            als = AccessLogServer(tnode.name, publish, registry, lambda _ip: None)
            receivers.append(als)
            als_port = await als.start(0)
            xds = FileXds(tmp_path / f"xds-{i + 1}")
            boot = bootstrap(xds.dir, tnode.name)
            # the node's access log cluster, as the real bootstrap has it
            rendered = render_bootstrap(tnode.name, "127.0.0.1", 1, 0, als_port=als_port)
            boot["static_resources"] = {
                "clusters": [c for c in rendered["static_resources"]["clusters"] if c["name"] == ALS_CLUSTER]
            }
            envoy = Envoy(boot, name=f"l7-{i + 1}")
            nodes.append(Node(tnode, xds, envoy, addr))
            envoy.start()
            await envoy.wait_admin()
        a_node, b_node = spread(placement, nodes)
        a = await asyncio.to_thread(a_node.node.add_pod, "a", subnet + "2", ID_A)
        b = await asyncio.to_thread(b_node.node.add_pod, "b", subnet + "3", ID_B)
        share_ipcache([n.node for n in nodes])
        with http_servers(b.ns, (8080, 9090, 7070)):
            c = Cluster(nodes, a, b, a_node, b_node)
            c.l7_flows = flows
            c.registries = registries
            yield c
    finally:
        for n in nodes:
            n.envoy.stop()
        for als in receivers:
            await als.stop(0)
        if added_route:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(l7redirect.remove_proxy_route)


@pytest.mark.parametrize("direction", ["ingress", "egress"])
async def test_privileged_http_rules_enforced_by_envoy(cluster: Cluster, direction: str) -> None:
    c = cluster
    await c.apply(cnp(direction, l7=True))
    status, body = await until(lambda: c.get("GET", "/public/x"), lambda r: r[0] == 200)
    assert status == 200, (body, c.drops(), c.logs())
    seen = json.loads(body)
    # the server answered, through the proxy, and saw the client's own address (identity kept)
    assert (seen["path"], seen["client"], seen["via_envoy"]) == ("/public/x", c.a.ip, True)
    status, body = await asyncio.to_thread(c.get, "GET", "/private")
    assert (status, body) == (403, "Access denied\r\n")
    assert (await asyncio.to_thread(c.get, "POST", "/public"))[0] == 403
    # the port without L7 rules is plain L4: straight to the server
    status, body = await asyncio.to_thread(c.get, "GET", "/private", 9090)
    assert status == 200 and json.loads(body)["via_envoy"] is False
    # the L4 events of the redirected flow carry the proxy port (verdict REDIRECTED)
    port = ProxyPorts().ingress if direction == "ingress" else ProxyPorts().egress
    events = c.node_of(direction).events
    assert any(socket.ntohs(e.proxy_port) == port and socket.ntohs(e.dport) == 8080 for e in events)
    assert not any(socket.ntohs(e.proxy_port) and socket.ntohs(e.dport) == 9090 for e in events)
    assert not c.drops()
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
    assert c.drops().get(133, 0) >= 1


async def test_privileged_no_proxy_listening_fails_closed(cluster: Cluster) -> None:
    """The policy redirects, but no Envoy listener is there (yet): the flow is dropped
    (SOCKET_LOOKUP_FAILED, 178), never delivered past the L7 rules."""
    c = cluster
    eps = [Endpoint(key=f"default/{p.name}", identity=p.identity) for p in (c.a, c.b)]
    res = resolve([cnp("ingress", l7=True)], eps, IDENTITIES, proxy_ports=ProxyPorts())
    for p, n in ((c.a, c.a_node), (c.b, c.b_node)):
        n.node.set_policy(p, res.policies[f"default/{p.name}"])
    status, _ = await asyncio.to_thread(request, c.a.ns, c.b.ip, 8080, "GET", "/public/x", 1.0)
    assert status == 0
    assert c.drops().get(178, 0) >= 1
    # the plain L4 port still works
    assert (await asyncio.to_thread(c.get, "GET", "/x", 9090))[0] == 200


@pytest.mark.parametrize("direction", ["ingress", "egress"])
async def test_privileged_whole_connection_judged_keepalive_many_requests_large_bodies(
    cluster: Cluster, direction: str
) -> None:
    """One keep-alive connection: every request is judged (a denied one in the middle gets its 403 and
    the connection goes on), 1 MiB request bodies reach the server, 2 MiB answers reach the client."""
    c = cluster
    await c.apply(cnp(direction, l7=True))
    status, body = await until(lambda: c.get("GET", "/public/warm"), lambda r: r[0] == 200)
    assert status == 200, (body, c.drops(), c.logs())
    mib = b"y" * (1 << 20)
    calls: list[tuple[str, str, bytes]] = []
    for i in range(40):
        calls.append(("GET", f"/public/{i}", b""))
        if i % 10 == 5:
            calls += [("GET", "/private", b""), ("POST", "/public/x", b""), ("GET", "/public/up", mib)]
    calls.append(("GET", f"/public/big{2 << 20}", b""))
    got = await asyncio.to_thread(keepalive, c.a.ns, c.b.ip, calls)
    assert len(got) == len(calls)
    for (method, path, sent), (status, raw) in zip(calls, got, strict=True):
        if path == "/private" or method == "POST":
            assert (status, raw) == (403, b"Access denied\r\n"), path
            continue
        assert status == 200, (path, raw[:200])
        seen = json.loads(raw)
        assert (seen["path"], seen["client"], seen["via_envoy"], seen["received"]) == (
            path,
            c.a.ip,
            True,
            len(sent),
        )
    assert len(json.loads(got[-1][1])["pad"]) == 2 << 20
    assert not c.drops()


def chained_policies(ingress_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """a's egress rule (`GET /public.*` to b) and b's ingress rule (`GET <ingress_path>` from a)."""
    egress = cnp("egress", l7=True)
    ingress = cnp("ingress", l7=True)
    ingress["metadata"]["name"] = "l7-in"
    ingress["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"] = [{"method": "GET", "path": ingress_path}]
    return egress, ingress


async def test_privileged_egress_and_ingress_rules_both_apply(cluster: Cluster) -> None:
    """An egress L7 rule at the client's node and an ingress L7 rule at the server's node on one
    connection: the egress proxy's upstream leg goes on to the ingress proxy, so a request passes only
    if both rule sets allow it, and the server still sees the client's own address."""
    c = cluster
    await c.apply(*chained_policies("/public/ok.*"))
    status, body = await until(lambda: c.get("GET", "/public/ok/1"), lambda r: r[0] == 200)
    assert status == 200, (body, c.drops(), c.logs())
    seen = json.loads(body)
    assert (seen["client"], seen["via_envoy"]) == (c.a.ip, True)
    # allowed at egress, denied at ingress / denied at egress already
    assert await asyncio.to_thread(c.get, "GET", "/public/other") == (403, "Access denied\r\n")
    assert await asyncio.to_thread(c.get, "GET", "/private") == (403, "Access denied\r\n")
    # the whole connection goes through both proxies
    got = await asyncio.to_thread(
        keepalive,
        c.a.ns,
        c.b.ip,
        [("GET", "/public/ok/2", b""), ("GET", "/public/no", b""), ("GET", "/public/ok/3", b"z" * 100000)],
    )
    assert [s for s, _ in got] == [200, 403, 200]
    assert json.loads(got[2][1])["received"] == 100000
    # both proxies logged the allowed request: one EGRESS flow, one INGRESS flow
    port = {"ingress": ProxyPorts().ingress, "egress": ProxyPorts().egress}

    def directions() -> set[str]:
        return {
            f.traffic_direction
            for f in c.l7_flows
            if f.l7 and f.l7.http and f.l7.http.code == 200 and f.l7.http.url.endswith("/public/ok/1")
        }

    deadline = asyncio.get_running_loop().time() + 30
    while directions() != {"EGRESS", "INGRESS"} and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    assert directions() == {"EGRESS", "INGRESS"}, c.l7_flows
    # the egress denial came from the client's node, the ingress one from the server's
    assert any(socket.ntohs(e.proxy_port) == port["egress"] for e in c.a_node.node.events)
    assert any(socket.ntohs(e.proxy_port) == port["ingress"] for e in c.b_node.node.events)
    assert not c.drops()


@pytest.mark.parametrize("direction", ["Ingress", "Egress"])
async def test_privileged_visibility_annotation_sees_http_without_restricting(
    cluster: Cluster, direction: str
) -> None:
    """No policy at all; the server (Ingress) or the client (Egress) pod carries
    ``policy.cilium.io/proxy-visibility: <Direction/8080/TCP/HTTP>``: its HTTP on 8080 goes through the
    node's Envoy and yields L7 flows and hubble_http_* metrics, and nothing is restricted."""
    c = cluster
    pod = "b" if direction == "Ingress" else "a"
    await c.apply(visibility={pod: f"<{direction}/8080/TCP/HTTP>"})
    status, body = await until(
        lambda: c.get("GET", "/anything?x=1"), lambda r: r[0] == 200 and json.loads(r[1])["via_envoy"]
    )
    assert status == 200, (body, c.drops(), c.logs())
    seen = json.loads(body)
    assert (seen["client"], seen["via_envoy"]) == (c.a.ip, True)  # the client's own address
    # nothing is denied: any method and path through Envoy, other ports straight to the server
    assert (await asyncio.to_thread(c.get, "POST", "/private"))[0] == 200
    for port in (9090, 7070):
        status, body = await asyncio.to_thread(c.get, "GET", "/x", port)
        assert status == 200 and json.loads(body)["via_envoy"] is False, port
    assert not c.drops()
    want = "INGRESS" if direction == "Ingress" else "EGRESS"

    def seen_l7() -> bool:
        return any(
            f.l7
            and f.l7.http
            and f.l7.http.code == 200
            and f.verdict == "FORWARDED"
            and f.traffic_direction == want
            for f in c.l7_flows
        ) and any(f.l7 and f.l7.http and f.l7.http.method == "POST" for f in c.l7_flows)

    def requests_counted() -> float:
        reporter = "server" if direction == "Ingress" else "client"
        return sum(
            sample.value
            for r in c.registries
            for metric in r.collect()
            for sample in metric.samples
            if sample.name == "hubble_http_requests_total"
            and sample.labels.get("status") == "200"
            and sample.labels.get("reporter") == reporter
        )

    deadline = asyncio.get_running_loop().time() + 30
    while not seen_l7() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    assert seen_l7(), c.l7_flows
    assert requests_counted() >= 1, [list(r.collect()) for r in c.registries]
    # the annotation gone: plain L4 again, still unrestricted
    await c.apply()
    status, body = await until(
        lambda: c.get("GET", "/y"), lambda r: r[0] == 200 and not json.loads(r[1])["via_envoy"]
    )
    assert status == 200 and json.loads(body)["via_envoy"] is False
