"""Nodes that come and go, with real clusters: readiness is backed by heartbeats from the node's agents.

- `up --nodes 2`, `down`, `up --nodes 1` in the same data dir: `get nodes` lists node-1 only, Ready,
  and a Deployment's pods all run there (once a bug: node-2 stayed Ready and got pods that stayed
  Pending forever).
- A node whose agents stop (SIGSTOP of its datapath, authd and Envoy: alive but silent, so the
  supervisor does not restart them) turns NotReady, its pod leaves the Service's EndpointSlice, is
  evicted and recreated on the other node; the node is Ready again once its agents resume.

The grace period and the eviction timeout are set short through `nodemesh up`'s flags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

NS = "nodes"
GRACE = "4"
EVICTION = "3"
MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: nodes}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: nodes}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: nodes}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: echo
        image: nodemesh/echo
        env:
        - {name: PORT, value: "8080"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
"""


def nm(d: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshctl.main", "--data-dir", str(d), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def up(d: Path, nodes: int) -> None:
    out = nm(
        d, "up", "--nodes", str(nodes), "--node-grace", GRACE, "--pod-eviction-timeout", EVICTION,
        "--timeout", "240",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def items(d: Path, kind: str, *ns: str) -> list[dict[str, Any]]:
    out = nm(d, "get", kind, *(("-n", ns[0]) if ns else ()), "-o", "json")
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return result


def node_table(d: Path) -> dict[str, str]:
    """`nodemesh get nodes` as a user reads it: name → STATUS."""
    out = nm(d, "get", "nodes")
    assert out.returncode == 0, out.stderr
    return {cols[0]: cols[1] for line in out.stdout.splitlines()[1:] if (cols := line.split())}


def running_pods(d: Path) -> dict[str, str]:
    """Ready pods of the Deployment: name → node."""
    out = {}
    for p in items(d, "pods", NS):
        conds = (p.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            out[p["metadata"]["name"]] = p["spec"].get("nodeName", "")
    return out


def endpoints(d: Path) -> dict[str, tuple[str, bool]]:
    """The Service's endpoints: pod → (node, ready)."""
    return {
        ep["targetRef"]["name"]: (ep.get("nodeName", ""), bool(ep["conditions"]["ready"]))
        for es in items(d, "endpointslices", NS)
        for ep in es.get("endpoints") or []
    }


def endpoints_if(d: Path, cond: Callable[[dict[str, tuple[str, bool]]], bool]) -> dict[str, tuple[str, bool]]:
    eps = endpoints(d)
    return eps if cond(eps) else {}


def node_pids(d: Path, node: str) -> list[int]:
    out = nm(d, "status", "-o", "json")
    procs = json.loads(out.stdout)["processes"]
    return [p["pid"] for p in procs if p["name"].endswith(f"@{node}") and p["pid"] > 0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "web.yaml").write_text(MANIFEST)
    try:
        yield tmp_path
    finally:
        nm(tmp_path, "down")


def test_privileged_up_with_fewer_nodes_leaves_no_stale_ready_node(data_dir: Path) -> None:
    d = data_dir
    up(d, 2)
    wait_for(lambda: node_table(d) == {"node-1": "Ready", "node-2": "Ready"}, 60, "both nodes Ready")
    assert nm(d, "apply", "-f", str(d / "web.yaml")).returncode == 0
    wait_for(lambda: sorted(running_pods(d).values()) == ["node-1", "node-2"], 120, "a pod on each node")
    assert nm(d, "down").returncode == 0

    up(d, 1)
    wait_for(lambda: node_table(d) == {"node-1": "Ready"}, 60, "node-1 alone, Ready")
    # The pod that was on node-2 is gone with it; its replacement runs on node-1.
    wait_for(lambda: sorted(running_pods(d).values()) == ["node-1", "node-1"], 120, "both pods on node-1")
    assert not (d / "nodes" / "node-2").exists()  # its IPAM, keys and Envoy bootstrap too
    eps = wait_for(lambda: endpoints_if(d, lambda e: len(e) == 2), 60, "two endpoints")
    assert set(eps.values()) == {("node-1", True)}


def test_privileged_a_silent_node_turns_not_ready_and_its_pods_move(data_dir: Path) -> None:
    d = data_dir
    up(d, 2)
    assert nm(d, "apply", "-f", str(d / "web.yaml")).returncode == 0
    pods = wait_for(
        lambda: p if sorted((p := running_pods(d)).values()) == ["node-1", "node-2"] else None, 120, "pods"
    )
    on_2 = next(name for name, node in pods.items() if node == "node-2")
    wait_for(lambda: endpoints(d).get(on_2) == ("node-2", True), 60, "node-2's pod in the EndpointSlice")

    silenced = node_pids(d, "node-2")
    assert len(silenced) == 3, silenced  # datapath, authd, envoy
    for pid in silenced:
        os.killpg(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(lambda: node_table(d).get("node-2") == "NotReady", 60, "node-2 NotReady")
        print(f"node-2 NotReady {time.monotonic() - t0:.1f}s after its agents stopped (grace {GRACE}s)")
        assert node_table(d)["node-1"] == "Ready"
        node2 = next(n for n in items(d, "nodes") if n["metadata"]["name"] == "node-2")
        assert {t["key"] for t in node2["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
        # Evicted after the toleration; the Deployment's replacement runs on node-1.
        wait_for(lambda: sorted(running_pods(d).values()) == ["node-1", "node-1"], 120, "pods on node-1")
        print(
            f"replacement Ready on node-1 {time.monotonic() - t0:.1f}s after node-2's agents stopped"
            f" (grace {GRACE}s + eviction {EVICTION}s)"
        )
        assert on_2 not in running_pods(d)
        eps = wait_for(lambda: endpoints_if(d, lambda e: len(e) == 2 and on_2 not in e), 60, "slices updated")
        assert set(eps.values()) == {("node-1", True)}
    finally:
        for pid in silenced:
            os.killpg(pid, signal.SIGCONT)
    wait_for(lambda: node_table(d).get("node-2") == "Ready", 60, "node-2 Ready again")
    node2 = next(n for n in items(d, "nodes") if n["metadata"]["name"] == "node-2")
    assert not node2["spec"].get("taints")
