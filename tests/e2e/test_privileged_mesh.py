"""The whole mesh, end to end, as a user drives it: ``nodemesh up --nodes 2`` with manifests, then only
the CLI (``status``, ``get``, ``exec``, ``observe``, ``auth list``, ``identity list``, ``down``) and
plain HTTP to the Gateway and Ingress addresses.

One cluster for the module (start-up dominates the cost). Tests run in file order; the last one
stops the cluster and checks that nothing of it is left: no process, no pod netns, no pinned map.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshctl import connectivity_plan as plan
from nodemesh.netns import netns_name
from testkit.placement import CROSS_NODE, PLACEMENTS, SAME_NODE

pytestmark = pytest.mark.privileged

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
NS = "e2e"
T = TypeVar("T")

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: e2e}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      nodeName: node-2
      containers:
      - name: echo
        image: nodemesh/echo:latest
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client, role: caller}}
    spec:
      nodeName: node-1
      containers:
      - name: echo
        image: nodemesh/echo:latest
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: intruder, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: intruder}}
  template:
    metadata: {labels: {app: intruder}}
    spec:
      nodeName: node-1
      containers:
      - name: echo
        image: nodemesh/echo:latest
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
---
# The same roles on the server's node: every traffic test runs cross-node and same-node.
apiVersion: apps/v1
kind: Deployment
metadata: {name: client-near, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: client-near}}
  template:
    metadata: {labels: {app: client-near, role: caller}}
    spec:
      nodeName: node-2
      containers:
      - name: echo
        image: nodemesh/echo:latest
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: intruder-near, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: intruder-near}}
  template:
    metadata: {labels: {app: intruder-near}}
    spec:
      nodeName: node-2
      containers:
      - name: echo
        image: nodemesh/echo:latest
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: e2e}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: client, namespace: e2e}
spec:
  selector: {app: client}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: e2e}
spec:
  gatewayClassName: nodemesh
  listeners:
  - {name: http, protocol: HTTP, port: 8080}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: e2e}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /server}}]
    backendRefs: [{name: server, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /client}}]
    backendRefs: [{name: client, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: site, namespace: e2e}
spec:
  ingressClassName: nodemesh
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: client, port: {number: 80}}}}
---
# The seed's policy: only role=caller reaches app=server (TCP 8080), mutually authenticated, and only
# with GET /public/... (Envoy answers 403 otherwise). The per-node Envoys (Gateway) reach it as host /
# remote-node, as in examples/demo.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: e2e}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: caller}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
    authentication: {mode: required}
  - fromEntities: [host, remote-node]
"""

# Run inside a pod with `nodemesh exec`: one HTTP request to the server pod (path argv[3], default
# /public/hello), the whole answer on stdout.
CONNECT = (
    "import socket,sys; s=socket.create_connection((sys.argv[1],8080),timeout=float(sys.argv[2])); "
    "p=sys.argv[3] if len(sys.argv)>3 else '/public/hello'; "
    "s.sendall(f'GET {p} HTTP/1.1\\r\\nHost: server\\r\\nConnection: close\\r\\n\\r\\n'.encode()); d=b''\n"
    "while (c := s.recv(65536)): d += c\n"
    "print(d.decode(errors='replace'))"
)


# Run inside a pod with `nodemesh exec`: resolve a name at a DNS server over UDP and TCP (dnspython).
RESOLVE = (
    "import sys,dns.message,dns.query; q=dns.message.make_query(sys.argv[2],'A'); "
    "u=dns.query.udp(q,sys.argv[1],timeout=5); t=dns.query.tcp(q,sys.argv[1],timeout=5); "
    "print(' '.join(sorted(rd.address for r in (u, t) for rr in r.answer for rd in rr)))"
)

# Run inside a pod with `nodemesh exec`: GET /public/ from a host by name (the pod's resolv.conf resolves
# it); the peer address the socket reports (the Service's, after the socket load-balancer), then the body.
GET_BY_NAME = (
    "import http.client,sys; c=http.client.HTTPConnection(sys.argv[1],timeout=10); "
    "c.request('GET','/public/'); "
    "r=c.getresponse(); print(c.sock.getpeername()[0]); print(r.status); print(r.read().decode())"
)


class Cluster:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [NODEMESH, "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"nodemesh {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def json(self, *args: str) -> Any:
        """``-o json`` output: one document, or JSON lines (a list then)."""
        out = self.run(*args, "-o", "json").stdout
        try:
            return json.loads(out)
        except ValueError:
            return [json.loads(line) for line in out.splitlines() if line.strip()]

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("get", "pods", "-n", NS).get("items", [])
        return items

    def pod(self, app: str) -> dict[str, Any]:
        return next(p for p in self.pods() if p["metadata"]["labels"].get("app") == app)

    def flows(self, *args: str) -> list[dict[str, Any]]:
        """The flows ``observe -o json`` prints (each line is a GetFlowsResponse: ``{"flow": …}``)."""
        out = self.run("observe", "-o", "json", "--last", "1000", *args).stdout
        return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


def poll(fn: Callable[[], T | None], what: str, timeout: float = 180) -> T:
    """``fn()`` until it returns something truthy (exceptions count as not yet), else fail with ``what``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # not there yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _ready(p: dict[str, Any]) -> bool:
    st = p.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    return st.get("phase") == "Running" and conds.get("Ready") == "True" and bool(st.get("podIP"))


def _http(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        body: dict[str, Any] = json.loads(r.read())
        return body


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short path: unix sockets live under it (108-byte limit).
    d = Path(tempfile.mkdtemp(prefix="nm-e2e-"))
    (d / "manifests").mkdir()
    (d / "manifests" / "mesh.yaml").write_text(MANIFESTS)
    c = Cluster(d / "data")
    try:
        c.run(
            "up",
            "--nodes",
            "2",
            "--manifests",
            str(d / "manifests"),
            "--monitoring",
            "--timeout",
            "300",
            timeout=360,
        )
        yield c
    finally:
        subprocess.run(
            [NODEMESH, "--data-dir", str(c.data_dir), "down"], capture_output=True, timeout=180, check=False
        )
        shutil.rmtree(d, ignore_errors=True)


def test_privileged_status_every_process_running_and_ready(cluster: Cluster) -> None:
    def all_ready() -> list[dict[str, Any]] | None:
        procs: list[dict[str, Any]] = cluster.json("status")["processes"]
        return procs if procs and all(p["running"] and p["ready"] for p in procs) else None

    procs = poll(all_ready, "every process running and ready")
    names = {p["name"] for p in procs}
    for n in ("nats", "apiserver", "xds", "identity", "datapath@node-1", "datapath@node-2", "envoy@node-2"):
        assert n in names


def test_privileged_pods_running_with_ips_on_both_nodes(cluster: Cluster) -> None:
    def running() -> list[dict[str, Any]] | None:
        pods = cluster.pods()
        return pods if len(pods) == 5 and all(_ready(p) for p in pods) else None

    pods = poll(running, "5 pods Running and Ready")
    where = {p["metadata"]["labels"]["app"]: p["spec"]["nodeName"] for p in pods}
    assert where == {
        "server": "node-2",
        "client": "node-1",
        "intruder": "node-1",
        "client-near": "node-2",
        "intruder-near": "node-2",
    }
    for p in pods:
        assert p["metadata"]["name"].startswith(p["metadata"]["labels"]["app"] + "-")
        ip = p["status"]["podIP"]
        assert ip.startswith("10.244.1." if p["spec"]["nodeName"] == "node-1" else "10.244.2."), ip


def test_privileged_gateway_routes_to_the_right_backend(cluster: Cluster) -> None:
    def address() -> str:
        gw = cluster.json("get", "gateways", "edge", "-n", NS)
        return str(((gw.get("status") or {}).get("addresses") or [{}])[0].get("value", ""))

    addr = poll(address, "the Gateway's address")
    server, client = cluster.pod("server"), cluster.pod("client")
    got = poll(lambda: _http(f"http://{addr}:8080/server/x"), "a 200 through the Gateway")
    assert got["pod"] == server["metadata"]["name"] and got["path"] == "/server/x"
    got = poll(lambda: _http(f"http://{addr}:8080/client"), "a 200 for /client")
    assert got["pod"] == client["metadata"]["name"]


def test_privileged_ingress_gets_an_address_and_serves(cluster: Cluster) -> None:
    def address() -> str:
        ing = cluster.json("get", "ingresses", "site", "-n", NS)
        lb = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}]
        return str(lb[0].get("ip", ""))

    addr = poll(address, "the Ingress's status.loadBalancer address")
    assert addr.startswith("127.0.100.")
    svc = cluster.json("get", "services", "cilium-ingress-site", "-n", NS)
    assert svc["spec"]["type"] == "LoadBalancer"
    got = poll(lambda: _http(f"http://{addr}/anything"), "a 200 through the Ingress")
    assert got["pod"] == cluster.pod("client")["metadata"]["name"]


def _auth_pair(cluster: Cluster) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = cluster.json("auth", "list")
    if isinstance(entries, dict):
        entries = entries.get("entries") or entries.get("items") or []
    return entries


# The client pods by placement relative to the server (node-2): every traffic test runs both ways.
CALLER = {CROSS_NODE: "client", SAME_NODE: "client-near"}
INTRUDER = {CROSS_NODE: "intruder", SAME_NODE: "intruder-near"}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_privileged_seed_policy_authenticates_then_applies_http_rules(
    cluster: Cluster, placement: str
) -> None:
    """The seed's policy as written (mutual auth + HTTP rules in one rule): the pair is authenticated
    ahead of traffic, so the first request passes (no AUTH_REQUIRED drop, nothing retransmitted),
    Envoy answers what the rules do not allow with 403, and the flows show both."""
    app = CALLER[placement]
    client, server = cluster.pod(app), cluster.pod("server")
    name, ip = client["metadata"]["name"], server["status"]["podIP"]
    # Proactive auth: authd authenticates the (caller, server) pair as soon as the policy needs it,
    # before any packet. Wait for that, then one attempt must pass.
    poll(lambda: _authenticated(cluster, app), f"the {app}/server pair authenticated in `auth list`")

    def get(path: str) -> str:
        p = cluster.run(
            "exec", name, "-n", NS, "--", sys.executable, "-c", CONNECT, ip, "20", path, check=False
        )
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    out = get("/public/hello")
    assert out.startswith("HTTP/1.1 200 OK") and server["metadata"]["name"] in out, out
    assert json.loads(out.partition("\n\n")[2])["path"] == "/public/hello"  # text mode: \r\n → \n
    assert get("/private").startswith("HTTP/1.1 403 Forbidden")
    assert "Access denied" in get("/private")
    drops = cluster.flows("--verdict", "DROPPED", "-n", NS)
    assert [f for f in drops if "AUTH" in str(f.get("drop_reason_desc", ""))] == []

    def flows() -> list[dict[str, Any]] | None:
        got = cluster.flows("--from-pod", name)
        l7 = {
            (f["verdict"], f["l7"]["http"].get("url", "").rpartition("/")[2])
            for f in got
            if (f.get("l7") or {}).get("http") and f["l7"]["http"].get("method")
        }
        redirected = [f for f in got if f.get("verdict") == "REDIRECTED" and f.get("auth_type") == "SPIRE"]
        return got if {("FORWARDED", "hello"), ("DROPPED", "private")} <= l7 and redirected else None

    # L7 verdicts from the server's node's Envoy, and the L4 flow REDIRECTED with the auth type
    poll(flows, f"L7 FORWARDED/DROPPED and REDIRECTED auth=SPIRE flows from {app}", timeout=60)


def _authenticated(cluster: Cluster, app: str = "client") -> list[dict[str, Any]]:
    ids = _identities(cluster)
    client, server = ids.get(app), ids.get("server")
    pairs = []
    for e in _auth_pair(cluster):
        key = e.get("key") or {}
        ends = {key.get("local_identity"), key.get("remote_identity")}
        if client and server and ends == {client, server} and e.get("state") == "authenticated":
            pairs.append(e)
    return pairs


def _identities(cluster: Cluster) -> dict[str, int]:
    out: dict[str, int] = {}
    data = cluster.json("identity", "list")
    items = data if isinstance(data, list) else data.get("identities") or data.get("items") or []
    for ident in items:
        labels = ident.get("labels") or []
        labels = labels if isinstance(labels, list) else [f"{k}={v}" for k, v in labels.items()]
        if f"k8s:io.kubernetes.pod.namespace={NS}" not in labels:
            continue
        for app in ("client", "server", "intruder", "client-near", "intruder-near"):
            if f"k8s:app={app}" in labels:
                out[app] = int(ident.get("id") or ident.get("identity") or 0)
    return out


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_privileged_unlabelled_pod_is_refused_and_the_drop_is_observed(
    cluster: Cluster, placement: str
) -> None:
    intruder, server = cluster.pod(INTRUDER[placement]), cluster.pod("server")
    p = cluster.run(
        "exec", intruder["metadata"]["name"], "-n", NS, "--", sys.executable, "-c", CONNECT,
        server["status"]["podIP"], "3",
        check=False,
    )  # fmt: skip
    assert p.returncode != 0 and "200 OK" not in p.stdout and "403" not in p.stdout

    def denied() -> list[dict[str, Any]]:
        return [
            f
            for f in cluster.flows("--verdict", "DROPPED", "--from-pod", intruder["metadata"]["name"])
            if f.get("drop_reason_desc") == "POLICY_DENIED"
        ]

    flows = poll(denied, "a POLICY_DENIED drop from the intruder in `observe`", timeout=60)
    assert flows[0]["IP"]["destination"] == server["status"]["podIP"]


def test_privileged_auth_list_and_identity_list(cluster: Cluster) -> None:
    ids = _identities(cluster)
    assert set(ids) == {"client", "server", "intruder", "client-near", "intruder-near"}, ids
    assert len(set(ids.values())) == 5
    entries = _authenticated(cluster)
    assert entries, "the client/server pair is in `auth list`"
    table = cluster.run("identity", "list").stdout
    assert "app=server" in table and "app=client" in table and "namespace=e2e" in table


# A brand-new pod's workload whose first action is one request to the server: the status line and
# the kernel's count of retransmitted segments on that connection (struct tcp_info tcpi_total_retrans,
# offset 100), so a dropped SYN or request would show as a retransmit, not as a slower answer.
FIRST_REQUEST = (
    "import socket,struct,sys; s=socket.create_connection((sys.argv[1],8080),timeout=30); "
    "s.sendall(b'GET /public/first HTTP/1.1\\r\\nHost: server\\r\\nConnection: close\\r\\n\\r\\n'); d=b''\n"
    "while (c := s.recv(65536)): d += c\n"
    "info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)\n"
    "print('STATUS', d.split(b'\\r\\n')[0].decode()); print('RETRANS', struct.unpack_from('I', info, 100)[0])"
)


def _auth_ready(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's ``nodemesh.io/AuthReady`` condition: how its start waited for its auth verdicts."""
    conds = [c for c in pod["status"].get("conditions", []) if c.get("type") == "nodemesh.io/AuthReady"]
    assert len(conds) == 1, pod["status"]
    return conds[0]


def _verdicts_waited(cond: dict[str, Any]) -> int:
    m = re.match(r"(\d+) auth verdict", str(cond.get("message", "")))
    assert cond.get("status") == "True" and m, cond
    return int(m.group(1))


def _no_retransmit(out: str) -> None:
    assert "STATUS HTTP/1.1 200 OK" in out and "RETRANS 0" in out, out


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_privileged_brand_new_client_pods_first_request_answered_without_a_retransmit(
    cluster: Cluster, placement: str, tmp_path: Path
) -> None:
    """The seed's policy and a caller pod created now, whose workload sends its request as soon as it
    starts: its start waited for the server's node to hold the (server, newcomer) verdict, so the first
    SYN passes: answered 200 through Envoy, no packet of it dropped, nothing retransmitted."""
    server = cluster.pod("server")
    node = "node-1" if placement == CROSS_NODE else "node-2"
    name = f"newcomer-{placement}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"role": "caller", "app": name}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "local/python",
                    "command": [sys.executable, "-c", FIRST_REQUEST, server["status"]["podIP"]],
                }
            ],
        },
    }
    manifest = tmp_path / "newcomer.json"
    manifest.write_text(json.dumps(pod))
    cluster.run("apply", "-f", str(manifest))
    log = cluster.data_dir / "nodes" / node / "pods" / f"{NS}_{name}.log"

    def answered() -> str | None:
        text = log.read_text() if log.exists() else ""
        return text if "RETRANS" in text or "Error" in text else None

    try:
        out = poll(answered, f"{name}'s first request answered", timeout=120)
        drops = cluster.flows("--verdict", "DROPPED", "--from-pod", name)
        _no_retransmit(out)
        assert drops == [], drops
        assert _verdicts_waited(_auth_ready(cluster.pod(name))) >= 1
        print(f"{name}: {out.strip()}; {_auth_ready(cluster.pod(name))['message']}")
    finally:
        cluster.run("delete", "-f", str(manifest), check=False)
        poll(lambda: all(p["metadata"]["name"] != name for p in cluster.pods()), f"{name} deleted")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_privileged_brand_new_server_pods_first_request_answered_without_a_retransmit(
    cluster: Cluster, placement: str, tmp_path: Path
) -> None:
    """The reverse: a server pod created now under a policy like the seed's, whose callers already run.
    Its start waited for its node to hold a verdict per caller, so the first request a caller sends
    once the server listens is answered 200 with nothing dropped or retransmitted."""
    node = "node-2" if placement == CROSS_NODE else "node-1"  # the caller `client` runs on node-1
    name = f"newserver-{placement}"
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": name}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"role": "caller"}}],
                    "toPorts": [
                        {
                            "ports": [{"port": "8080", "protocol": "TCP"}],
                            "rules": {"http": [{"method": "GET", "path": "/public/.*"}]},
                        }
                    ],
                    "authentication": {"mode": "required"},
                }
            ],
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "echo", "image": "nodemesh/echo:latest", "env": [{"name": "PORT", "value": "8080"}]}
            ],
        },
    }
    manifest = tmp_path / "newserver.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, pod]}))
    cluster.run("apply", "-f", str(manifest))
    log = cluster.data_dir / "nodes" / node / "pods" / f"{NS}_{name}.log"
    caller = cluster.pod("client")["metadata"]["name"]
    try:
        poll(lambda: log.exists() and "listening" in log.read_text(), f"{name} listening", timeout=120)
        ip = cluster.pod(name)["status"]["podIP"]
        p = cluster.run("exec", caller, "-n", NS, "--", sys.executable, "-c", FIRST_REQUEST, ip, check=False)
        drops = cluster.flows("--verdict", "DROPPED", "--from-pod", caller)
        _no_retransmit(p.stdout + p.stderr)
        assert [d for d in drops if (d.get("IP") or {}).get("destination") == ip] == [], drops
        # one verdict per caller identity (client on node-1, client-near on node-2) at least
        assert _verdicts_waited(_auth_ready(cluster.pod(name))) >= 2
        print(f"{name}: {p.stdout.strip()}; {_auth_ready(cluster.pod(name))['message']}")
    finally:
        cluster.run("delete", "-f", str(manifest), check=False)
        poll(lambda: all(p["metadata"]["name"] != name for p in cluster.pods()), f"{name} deleted")


def test_privileged_pods_on_both_nodes_resolve_services_at_kube_dns(cluster: Cluster) -> None:
    kube_dns = cluster.json("get", "services", "kube-dns", "-n", "kube-system")
    assert kube_dns["spec"]["clusterIP"] == "10.96.0.10"
    server_ip = cluster.json("get", "services", "server", "-n", NS)["spec"]["clusterIP"]
    # the one DNS server on the host, reached through each pod's veth: at its own address, and at
    # kube-dns' ClusterIP (the pods' nameserver), which the socket load-balancer translates to it —
    # UDP answers must come back from 10.96.0.10 (dnspython checks): from node-1's client and
    # node-2's server
    for app in ("client", "server"):
        pod = cluster.pod(app)
        for nameserver in ("169.254.20.10", "10.96.0.10"):
            p = cluster.run(
                "exec", pod["metadata"]["name"], "-n", NS, "--", sys.executable, "-c", RESOLVE,
                nameserver, "server.e2e.svc.cluster.local",
                check=False,
            )  # fmt: skip
            assert p.returncode == 0, (app, nameserver, p.stdout + p.stderr)
            assert p.stdout.split() == [server_ip, server_ip], (app, nameserver)


def test_privileged_pods_on_both_nodes_reach_services_by_name(cluster: Cluster) -> None:
    # as a workload calls another: by the Service's name, through cluster DNS and the socket LB.
    # client (node-1) → Service server (its pod on node-2; authenticated); server (node-2) → Service
    # client (pod on node-1); intruder (node-1) → Service client (same node). Short, namespaced and
    # fully qualified names (the search path of the pod's resolv.conf completes the first two).
    poll(lambda: _authenticated(cluster), "the client/server pair authenticated in `auth list`")
    cases = [("client", "server", "server"), ("server", "client", "client.e2e"),
             ("intruder", "client", "client.e2e.svc.cluster.local")]  # fmt: skip
    for src, dst, host in cases:
        src_pod, dst_pod = cluster.pod(src), cluster.pod(dst)
        cluster_ip = cluster.json("get", "services", dst, "-n", NS)["spec"]["clusterIP"]
        p = cluster.run(
            "exec", src_pod["metadata"]["name"], "-n", NS, "--", sys.executable, "-c", GET_BY_NAME, host,
            check=False,
        )  # fmt: skip
        assert p.returncode == 0, (src, host, p.stdout + p.stderr)
        peer, status, body = p.stdout.split("\n", 2)
        assert (peer, status) == (cluster_ip, "200"), (src, host)
        assert json.loads(body)["pod"] == dst_pod["metadata"]["name"], (src, host)
    # `observe` shows the connection pod to pod (the backend, after translation), allowed
    client, server = cluster.pod("client"), cluster.pod("server")

    def to_server() -> list[dict[str, Any]]:
        return [
            f
            for f in cluster.flows("--from-pod", client["metadata"]["name"])
            if f.get("IP", {}).get("destination") == server["status"]["podIP"]
            and f.get("verdict") == "FORWARDED"
        ]

    assert poll(to_server, "client → server pod flows in `observe`", timeout=60)


def test_privileged_pod_processes_see_kubelets_resolv_conf(cluster: Cluster) -> None:
    with open("/etc/resolv.conf") as fh:
        host = fh.read()
        host_search = next((line.split()[1:] for line in host.splitlines() if line.startswith("search")), [])
    search = ["e2e.svc.cluster.local", "svc.cluster.local", "cluster.local", *host_search]
    want = f"search {' '.join(search)}\nnameserver 10.96.0.10\noptions ndots:5\n"  # as kubelet writes it
    for pod in cluster.pods():
        node, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
        pid = (cluster.data_dir / "nodes" / node / "pods" / f"{NS}_{name}.pid").read_text().split()[0]
        # the workload's own view of the filesystem: its private mount of the pod's file
        assert Path(f"/proc/{pid}/root/etc/resolv.conf").read_text() == want, name
    with open("/etc/resolv.conf") as fh:
        assert fh.read() == host  # the host's file is untouched


def test_privileged_connectivity_test_passes_on_both_nodes(cluster: Cluster) -> None:
    """`nodemesh connectivity test`, what a user runs after installing: every check passes, on the same
    node and across nodes, and it leaves nothing behind."""
    p = cluster.run("connectivity", "test", timeout=600, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert not [line for line in lines if line.startswith("✗")], p.stdout
    passed = [line for line in lines if line.startswith("✓")]
    assert len(passed) == 1 + len(plan.checks(2)), p.stdout  # the pods line + every check
    assert sum("across nodes" in line for line in passed) >= 6
    assert cluster.json("get", "pods", "-n", plan.NAMESPACE).get("items") == []


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "nodemesh-dashboard.json"


def _prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend_labels(legend: str) -> list[str]:
    return re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)


def _missing_labels(series: list[dict[str, Any]], legend: str) -> list[str]:
    """Labels the legend shows that no series has. A source_*/destination_* label may be absent where
    that side is a reserved identity (Hubble leaves them empty; Prometheus drops empty labels)."""
    out = []
    for label in _legend_labels(legend):
        side = label.split("_", 1)[0]
        if any(label in s["metric"] for s in series):
            continue
        if side in ("source", "destination") and all(
            str(s["metric"].get(side, "")).startswith("reserved:") or side not in s["metric"] for s in series
        ):
            continue
        out.append(label)
    return out


def test_privileged_every_dashboard_panel_has_data_in_real_prometheus(cluster: Cluster) -> None:
    """`up --monitoring`: the real Prometheus scrapes every process; every panel of the dashboard in
    deploy/grafana returns series with the labels its legend shows, after real traffic."""
    info = json.loads((cluster.data_dir / "run" / "cluster.json").read_text())
    prom = info["prometheus_url"]
    assert prom and info["ui_url"]
    with urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=10) as r:
        targets = json.loads(r.read())["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets}
    assert {"datapath", "authd", "envoy", "xds", "identity", "watcher", "dns"} <= jobs, jobs
    gw = poll(
        lambda: cluster.json("get", "gateway", "edge", "-n", NS)["status"]["addresses"][0]["value"], "gw"
    )
    intruder, server = cluster.pod("intruder"), cluster.pod("server")
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 8
    pending = {(p["title"], t["refId"]): t for p in panels for t in p["targets"]}
    deadline = time.monotonic() + 120
    why: dict[tuple[str, str], str] = {}
    while pending and time.monotonic() < deadline:
        for path in ("/server/a", "/client/b", "/server/c"):  # L7 traffic through the Gateway's Envoy
            try:
                _http(f"http://{gw}:8080{path}")
            except Exception:  # counted by the panels anyway; the loop retries
                pass
        cluster.run(
            "exec", intruder["metadata"]["name"], "-n", NS, "--", sys.executable, "-c", CONNECT,
            server["status"]["podIP"], "1",
            check=False,
        )  # fmt: skip  # a drop for the drops panel
        for key, t in list(pending.items()):
            series = _prom_query(prom, t["expr"])
            missing = _missing_labels(series, t["legendFormat"]) if series else ["(no series)"]
            if not missing:
                del pending[key]
            else:
                why[key] = f"{t['expr']}: missing {missing}; got {[s['metric'] for s in series][:3]}"
        time.sleep(2)
    assert not pending, "\n".join(why[k] for k in pending)


def test_privileged_the_service_map_page_serves_the_clusters_flows(cluster: Cluster) -> None:
    info = json.loads((cluster.data_dir / "run" / "cluster.json").read_text())
    nodes = poll(
        lambda: [n["id"] for n in _http_json(f"{info['ui_url']}/api/map?window=600")["nodes"]] or None,
        "workloads on the service map",
        timeout=60,
    )
    assert f"{NS}/server" in nodes and f"{NS}/client" in nodes, nodes


def _http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_privileged_down_leaves_nothing(cluster: Cluster) -> None:
    data = cluster.data_dir
    states = [json.loads((data / "nodes" / n / "datapath.json").read_text()) for n in ("node-1", "node-2")]
    scopes = {s["scope"] for s in states}
    netns = {
        netns_name(p["spec"]["nodeName"], NS, p["metadata"]["name"], scope)
        for p in cluster.pods()
        for scope in scopes
    }
    assert netns & set(_ip_netns()), "the pods' namespaces exist while the cluster runs"
    cluster.run("down", timeout=180)
    marker = f"NODEMESH_CLUSTER_DATA_DIR={data}".encode()
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                left.append(pid)
        except OSError:
            continue
    assert left == [], f"processes of the cluster still alive: {left}"
    assert netns & set(_ip_netns()) == set()
    for scope in scopes:
        assert not Path(f"/sys/fs/bpf/nodemesh/{scope}").exists()
    assert cluster.run("status", check=False).returncode == 1
    lo = subprocess.run(["ip", "-4", "addr", "show", "lo"], capture_output=True, text=True, check=True).stdout
    assert "169.254.20.10" not in lo  # the DNS address went with the cluster


def _ip_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
