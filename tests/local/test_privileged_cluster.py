"""`nodemesh up --nodes 2` → status, restart after SIGKILL, a pod's namespace, `down` leaves nothing.

One cluster for the module (bring-up is the slow part). Privileged: the datapath creates network
namespaces and loads BPF.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nodemesh.netns as nodemesh_netns
from localcluster.cleanup import MARKER_ENV, cluster_pids
from nodemesh.nodestate import read_datapath_state

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


def nm(d: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshctl.main", "--data-dir", str(d), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(d: Path) -> dict[str, Any]:
    out = nm(d, "status", "-o", "json")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cluster")
    # A process left by an earlier run of this data dir (e.g. its supervisor was SIGKILLed).
    stray = subprocess.Popen(["sleep", "300"], env={MARKER_ENV: str(d), "PATH": os.environ["PATH"]})
    try:
        up = nm(d, "up", "--nodes", "2", "--timeout", "240")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "1 process(es) left by a previous run" in up.stdout
        assert stray.wait(10) is not None
        yield d
    finally:
        nm(d, "down")
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_privileged_up_status(cluster: Path) -> None:
    st = status(cluster)
    assert st["up"] and st["phase"] == "running"
    procs = {p["name"]: p for p in st["processes"]}
    assert {"nats", "apiserver", "watcher-0", "watcher-1", "operator", "envoy@node-1", "authd@node-2"} <= set(
        procs
    )
    for p in procs.values():
        assert p["running"] and p["ready"] and p["pid"] > 0 and p["health_port"] > 0, p
        assert p["version"], p
    assert st["nats"]["reachable"]
    assert {"K8S", "EVENTS", "FLOWS"} <= {s["name"] for s in st["nats"]["streams"]}
    assert {"identities", "leases", "nodes"} <= {b["name"] for b in st["nats"]["buckets"]}
    assert [(n["name"], n["ready"], n["podCIDR"]) for n in st["nodes"]] == [
        ("node-1", True, "10.244.1.0/24"),
        ("node-2", True, "10.244.2.0/24"),
    ]
    assert (cluster / "run" / "credentials.json").stat().st_mode & 0o777 == 0o600
    again = nm(cluster, "up", "--nodes", "2")
    assert again.returncode == 0 and "already up" in again.stdout
    nodes = nm(cluster, "get", "nodes")
    assert nodes.returncode == 0 and "node-2" in nodes.stdout


@pytest.mark.parametrize("name", ["xds", "watcher-0", "datapath@node-1"])
def test_privileged_restart_after_sigkill(cluster: Path, name: str) -> None:
    before = {p["name"]: p for p in status(cluster)["processes"]}[name]
    os.kill(before["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def restarted() -> dict[str, Any] | None:
        p = {q["name"]: q for q in status(cluster)["processes"]}[name]
        ok = p["restarts"] == before["restarts"] + 1 and p["ready"] and p["pid"] != before["pid"]
        return p if ok else None

    after = wait_for(restarted, 90, f"{name} restarted and ready")
    elapsed = time.monotonic() - killed
    print(f"{name}: ready again {elapsed:.1f}s after SIGKILL (pid {before['pid']} → {after['pid']})")
    assert after["last_exit"] == -signal.SIGKILL


POD = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: {ns}, labels: {{app: echo}}}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    image: nodemesh/echo
    env: [{{name: PORT, value: "8080"}}]
"""


def test_privileged_down_leaves_nothing(cluster: Path, tmp_path: Path) -> None:
    ns = f"t{os.getpid()}"
    f = tmp_path / "pod.yaml"
    f.write_text(POD.format(ns=ns))
    applied = nm(cluster, "apply", "-f", str(f))
    assert applied.returncode == 0, applied.stderr

    def running() -> bool:
        out = nm(cluster, "get", "pod", "echo", "-n", ns, "-o", "json")
        return out.returncode == 0 and json.loads(out.stdout).get("status", {}).get("phase") == "Running"

    wait_for(running, 90, "the pod to run")

    # The datapath names a pod's netns by (scope, node, namespace, pod) and records its scope.
    state = read_datapath_state(cluster / "nodes" / "node-2")
    assert state is not None and state.scope
    netns = Path(nodemesh_netns.netns_path(nodemesh_netns.netns_name("node-2", ns, "echo", state.scope)))
    assert netns.exists(), netns
    assert cluster_pids(cluster)

    down = nm(cluster, "down")
    assert down.returncode == 0 and "nodemesh is down" in down.stdout
    assert cluster_pids(cluster) == []
    assert not netns.exists()
    assert not (cluster / "run" / "supervisor.pid").exists()
    st = status(cluster)
    assert not st["up"]
    again = nm(cluster, "down")
    assert again.returncode == 0 and "no nodemesh cluster running" in again.stdout


def test_privileged_killed_supervisor_leaves_nothing_behind(tmp_path: Path) -> None:
    d = tmp_path / "c"
    try:
        # Readiness does not matter here, only that every process has been started.
        nm(d, "up", "--nodes", "1", "--timeout", "1")

        def all_started() -> bool:
            st = status(d)
            procs = st.get("processes") or []
            return bool(procs) and all(p["running"] for p in procs)

        wait_for(all_started, 120, "every process to start")
        sup_pid = int((d / "run" / "supervisor.pid").read_text())
        assert [p for p in cluster_pids(d) if p != sup_pid]
        os.kill(sup_pid, signal.SIGKILL)
        # Its children live on (own process groups); `down` finds them by their marker.
        down = nm(d, "down")
        assert down.returncode == 0 and "leftover" in down.stdout, down.stdout
        assert cluster_pids(d) == []
    finally:
        nm(d, "down")
