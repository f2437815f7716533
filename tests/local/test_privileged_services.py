"""Services in a local cluster, end to end: `nodemesh up --nodes 2` with Services in the manifests;
the API server allocates ClusterIPs and nodePorts and keeps EndpointSlices from the pods' readiness
(probed by the datapath); pods on both nodes (`nodemesh exec … curl`) and the host reach the
Services; `nodemesh down` detaches the socket programs.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local.test_privileged_cluster import nm, wait_for

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

NS = "svc"
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: svc}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svc}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: svc}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: svc}
spec:
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: svc, labels: {{app: {app}}}}}
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("svc-cluster")
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
    (man / "svc.yaml").write_text(MANIFESTS + pods)
    try:
        up = nm(d, "up", "--nodes", "2", "--manifests", str(man), "--timeout", "240")
        assert up.returncode == 0, up.stdout + up.stderr
        yield d
    finally:
        nm(d, "down")


def get(d: Path, kind: str, name: str) -> dict[str, Any]:
    out = nm(d, "get", kind, name, "-n", NS, "-o", "json")
    assert out.returncode == 0, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def answers(d: Path, where: str, url: str, n: int = 16) -> set[str]:
    """Which pods answered ``n`` requests to ``url`` from pod ``where`` ("" = the host)."""
    loop = f"for i in $(seq {n}); do curl -s -m 3 {url} | tr -d '\\n'; echo; done"  # one JSON per line
    if where:
        out = nm(d, "exec", where, "-n", NS, "--", "sh", "-c", loop, timeout=120)
    else:
        out = subprocess.run(["sh", "-c", loop], capture_output=True, text=True, timeout=120)
    pods = set()
    for line in out.stdout.splitlines():
        try:
            pods.add(str(json.loads(line)["pod"]))
        except (ValueError, KeyError, TypeError):
            pods.add("<no answer>")
    return pods


def until(d: Path, where: str, url: str, want: set[str]) -> None:
    wait_for(lambda: answers(d, where, url, 8) == want, 90, f"{url} from {where or 'the host'} → {want}")


def test_privileged_services_from_pods_and_host(cluster: Path) -> None:
    wait_for(lambda: all(_ready(cluster, p) for p in ("web-1", "web-2", "client-1", "client-2")), 120, "pods")
    vip = get(cluster, "svc", "web")["spec"]["clusterIP"]
    both = {"web-1", "web-2"}
    for where in ("client-1", "client-2", ""):  # a backend's node, the other node, the host
        until(cluster, where, f"http://{vip}/", both)
        assert answers(cluster, where, f"http://{vip}/") == both
    # NodePort (allocated by the API server) on each node's address
    np = get(cluster, "svc", "web-np")["spec"]["ports"][0]["nodePort"]
    assert 30000 <= np <= 32767
    for where in ("client-1", ""):
        for addr in ("127.0.50.1", "127.0.50.2"):
            until(cluster, where, f"http://{addr}:{np}/", both)
    # internalTrafficPolicy Local: each node's pods reach their own node's backend
    local = get(cluster, "svc", "web-local")["spec"]["clusterIP"]
    until(cluster, "client-1", f"http://{local}/", {"web-1"})
    until(cluster, "client-2", f"http://{local}/", {"web-2"})


def test_privileged_services_follow_pod_deletion(cluster: Path) -> None:
    vip = get(cluster, "svc", "web")["spec"]["clusterIP"]
    until(cluster, "client-1", f"http://{vip}/", {"web-1", "web-2"})
    t0 = time.monotonic()
    deleted = nm(cluster, "delete", "pod", "web-2", "-n", NS)
    assert deleted.returncode == 0, deleted.stderr
    for where in ("client-1", "client-2", ""):
        until(cluster, where, f"http://{vip}/", {"web-1"})
    print(f"pod deletion → Service converged in {time.monotonic() - t0:.1f}s (both nodes and the host)")


def test_privileged_services_down_detaches_socket_programs(cluster: Path) -> None:
    down = nm(cluster, "down")
    assert down.returncode == 0, down.stderr
    shown = subprocess.run(
        ["bpftool", "cgroup", "show", _cgroup_root(), "-j"], capture_output=True, text=True, check=True
    )
    attached = json.loads(shown.stdout.strip() or "[]")
    assert not [p for p in attached if str(p.get("name", "")).startswith("nm_lb_")]


def _cgroup_root() -> str:
    from services.datapath.lb.cgroup import cgroup2_root

    return cgroup2_root()


def _ready(d: Path, pod: str) -> bool:
    out = nm(d, "get", "pod", pod, "-n", NS, "-o", "json")
    if out.returncode != 0:
        return False
    conds = json.loads(out.stdout).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
