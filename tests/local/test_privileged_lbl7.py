"""L7 load-balancing by annotation in a local cluster (`nodemesh up --nodes 2`): a Service annotated
``service.cilium.io/lb-l7: enabled`` is served by the client's node's Envoy. Clients on both nodes and
the host send several requests over ONE keep-alive connection to the ClusterIP and reach both backends
(per request: the socket LB alone keeps a connection on one backend), the socket still reports the
ClusterIP as its peer, the requests are L7 flows naming the Service and count in hubble_http_*, every
algorithm is served, and removing the annotation hands the Service back to the socket LB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.layout import load_cluster, load_state
from nodemesh import lbl7
from tests.local.test_privileged_cluster import nm, wait_for

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

NS = "lbl7"
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: lbl7
  annotations: {{"service.cilium.io/lb-l7": "{enabled}", "service.cilium.io/lb-l7-algorithm": "{algo}"}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: lbl7, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    image: nodemesh/echo
    env:
    - {{name: PORT, value: "8080"}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
"""
# Several requests on one connection (http.client keeps it alive); prints which pod answered each,
# how many local sockets were used and the peer the socket reports.
KEEPALIVE = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
pods, socks, peers = [], set(), set()
for _ in range(int(sys.argv[3])):
    c.request("GET", "/")
    r = c.getresponse()
    pods.append(json.loads(r.read())["pod"])
    socks.add(c.sock.getsockname())
    peers.add("%s:%d" % c.sock.getpeername())
print(json.dumps({"pods": pods, "sockets": len(socks), "peers": sorted(peers)}))
"""
BOTH = {"web-1", "web-2"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("lbl7-cluster")
    man = d / "manifests"
    man.mkdir()
    pods = "".join(
        POD.format(name=n, app=a, node=node)
        for n, a, node in (
            ("web-1", "web", "node-1"),
            ("web-2", "web", "node-2"),
            ("client-1", "client", "node-1"),
            ("client-2", "client", "node-2"),
        )
    )
    (man / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: lbl7}\n")
    (man / "svc.yaml").write_text(SERVICE.format(enabled="enabled", algo="round_robin") + pods)
    try:
        up = nm(d, "up", "--nodes", "2", "--manifests", str(man), "--timeout", "240")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(lambda: all(_ready(d, p) for p in ("web-1", "web-2", "client-1", "client-2")), 120, "pods")
        yield d
    finally:
        nm(d, "down")


def _ready(d: Path, pod: str) -> bool:
    out = nm(d, "get", "pod", pod, "-n", NS, "-o", "json")
    if out.returncode != 0:
        return False
    conds = json.loads(out.stdout).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def service(d: Path) -> dict[str, Any]:
    out = nm(d, "get", "svc", "web", "-n", NS, "-o", "json")
    assert out.returncode == 0, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def apply_service(d: Path, enabled: str, algo: str) -> subprocess.CompletedProcess[str]:
    f = d / "svc-update.yaml"
    f.write_text(SERVICE.format(enabled=enabled, algo=algo))
    return nm(d, "apply", "-f", str(f))


def keepalive(d: Path, where: str, vip: str, n: int = 8) -> dict[str, Any]:
    """``n`` requests on one connection to ``vip``:80 from pod ``where`` ("" = the host)."""
    cmd = [sys.executable, "-c", KEEPALIVE, vip, "80", str(n)]
    if where:
        out = nm(d, "exec", where, "-n", NS, "--", *cmd, timeout=60)
    else:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out.stdout + out.stderr}
    return result


def frontend(d: Path, node: str, vip: str) -> dict[str, Any]:
    out = nm(d, "service", "list", "--node", node, "-o", "json")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["frontend"] == f"{vip}:80/TCP"]
    return rows[0] if rows else {}


def listener_port(svc: dict[str, Any]) -> int:
    return lbl7.assign(lbl7.claims(svc)).ports[lbl7.PortKey(NS, "web", 80)]


def metrics(d: Path, node: str) -> str:
    state = load_state(str(d))
    assert state is not None
    (p,) = [p for p in state.procs if p.service == "datapath" and p.node == node]
    with urllib.request.urlopen(f"http://127.0.0.1:{p.health_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def envoy_lb_policy(d: Path, node: str) -> str:
    (spec,) = [n for n in load_cluster(str(d)).nodes if n.name == node]
    url = f"http://127.0.0.1:{spec.envoy_admin_port}/config_dump?resource=dynamic_active_clusters"
    with urllib.request.urlopen(url, timeout=5) as r:
        dump = json.loads(r.read())
    for c in dump.get("configs", []):
        if c.get("cluster", {}).get("name") == f"{NS}:web:80":
            return str(c["cluster"].get("lb_policy", "ROUND_ROBIN"))
    return ""


def test_privileged_lbl7_balances_per_request_on_one_connection(cluster: Path) -> None:
    svc = service(cluster)
    vip, port = svc["spec"]["clusterIP"], listener_port(svc)
    # each node's socket LB sends the ClusterIP to its own Envoy (router IP : the rule's port)
    for node, router in (("node-1", "10.244.1.1"), ("node-2", "10.244.2.1")):
        fe = wait_for(lambda n=node: frontend(cluster, n, vip), 60, f"the frontend on {node}")
        assert [b["address"] for b in fe["backends"]] == [f"{router}:{port}/TCP"]
        assert fe["l7_proxy_port"] == port and fe["name"] == "web"
    # a backend's node (client-1 with web-1), the other node (client-2 with web-1), and the host
    for where in ("client-1", "client-2", ""):
        r = wait_for(lambda w=where: (x := keepalive(cluster, w, vip)) and "pods" in x and x, 90, "answers")
        assert set(r["pods"]) == BOTH, r  # per request, over...
        assert r["sockets"] == 1, r  # ...one connection
        assert r["peers"] == [f"{vip}:80"], r  # getpeername: the ClusterIP, not Envoy's address


def test_privileged_lbl7_requests_are_l7_flows_with_the_service_and_counted(cluster: Path) -> None:
    vip = service(cluster)["spec"]["clusterIP"]
    for where in ("client-1", "client-2", ""):
        assert set(keepalive(cluster, where, vip)["pods"]) == BOTH

    def flows() -> list[dict[str, Any]]:
        out = nm(
            cluster, "observe", "-o", "json", "--last", "2000", "--type", "l7", "--to-service", f"{NS}/web"
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def seen() -> set[tuple[str, str, str]]:
        out = set()
        for f in flows():
            flow = f.get("flow", f)
            assert flow["destination_service"] == {"name": "web", "namespace": NS}
            src = flow.get("source", {}).get("pod_name") or "host"
            out.add((flow.get("node_name", ""), src, flow.get("destination", {}).get("pod_name", "")))
        return out

    want = {
        ("node-1", "client-1", "web-1"), ("node-1", "client-1", "web-2"),
        ("node-2", "client-2", "web-1"), ("node-2", "client-2", "web-2"),
        ("node-1", "host", "web-1"), ("node-1", "host", "web-2"),
    }  # fmt: skip
    wait_for(lambda: want <= seen(), 30, f"L7 flows {want}")
    for node in ("node-1", "node-2"):
        lines = [
            ln for ln in metrics(cluster, node).splitlines() if ln.startswith("hubble_http_requests_total{")
        ]
        mine = [ln for ln in lines if f'destination="{NS}/web"' in ln and 'status="200"' in ln]
        assert mine and all(float(ln.rsplit(" ", 1)[1]) > 0 for ln in mine), lines
        if node == "node-2":
            assert any(f'source="{NS}/client"' in ln for ln in mine), mine


@pytest.mark.parametrize("algo", ["least_request", "random", "round_robin"])
def test_privileged_lbl7_every_algorithm_is_served(cluster: Path, algo: str) -> None:
    applied = apply_service(cluster, "enabled", algo)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for node in ("node-1", "node-2"):
        wait_for(lambda n=node: envoy_lb_policy(cluster, n) == algo.upper(), 30, f"{algo} on {node}'s Envoy")
    vip = service(cluster)["spec"]["clusterIP"]
    r = keepalive(cluster, "client-2", vip, 24)
    assert set(r["pods"]) == BOTH and r["sockets"] == 1, r


def test_privileged_lbl7_invalid_algorithm_is_refused_clearly(cluster: Path) -> None:
    out = apply_service(cluster, "enabled", "fastest")
    assert out.returncode != 0
    assert "service.cilium.io/lb-l7-algorithm 'fastest' is not one of round_robin, least_request, random" in (
        out.stdout + out.stderr
    )
    assert service(cluster)["metadata"]["annotations"]["service.cilium.io/lb-l7-algorithm"] == "round_robin"


def test_privileged_lbl7_removing_the_annotation_returns_to_socket_lb(cluster: Path) -> None:
    applied = apply_service(cluster, "disabled", "round_robin")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    vip = service(cluster)["spec"]["clusterIP"]
    for node in ("node-1", "node-2"):
        wait_for(
            lambda n=node: (
                sorted(b["address"] for b in frontend(cluster, n, vip).get("backends", []))
                and not frontend(cluster, n, vip)["l7_proxy_port"]
            ),
            60,
            f"socket LB on {node}",
        )
    # one connection stays on one backend now; new connections still spread
    for where in ("client-1", "client-2", ""):
        r = keepalive(cluster, where, vip)
        assert len(set(r["pods"])) == 1 and r["sockets"] == 1 and r["peers"] == [f"{vip}:80"], r
    seen = set()
    for _ in range(40):
        seen |= set(keepalive(cluster, "client-1", vip, 1)["pods"])
        if seen == BOTH:
            break
    assert seen == BOTH
