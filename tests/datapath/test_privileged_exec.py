"""``nodemesh exec`` runs a command inside a pod's network namespace, found by node + namespace + name."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from localcluster.layout import ClusterInfo, NodeSpec
from nodemesh.netns import host_ifname, netns_name
from services.datapath.pods.netns import create_pod_netns, delete_pod_netns

pytestmark = pytest.mark.privileged


def _nodemesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshctl.main", *args], capture_output=True, text=True, timeout=60
    )


def test_privileged_exec_runs_in_pod_netns(tmp_path: Path, subnet: str) -> None:
    nodes = [f"x{secrets.token_hex(3)}", f"y{secrets.token_hex(3)}"]
    (tmp_path / "run").mkdir()
    specs = [
        NodeSpec(name=n, index=i + 1, address=f"127.0.50.{i + 1}", pod_cidr=subnet + "0/24")
        for i, n in enumerate(nodes)
    ]
    url = "nats://127.0.0.1:1"
    info = ClusterInfo(data_dir=str(tmp_path), nats_url=url, api_url=url, xds_addr="127.0.0.1:1", nodes=specs)
    (tmp_path / "run" / "cluster.json").write_bytes(msgspec.json.encode(info))
    # the node's datapath records its naming scope; exec must use it
    node_dir = tmp_path / "nodes" / nodes[1]
    node_dir.mkdir(parents=True)
    (node_dir / "datapath.json").write_text(json.dumps({"node": nodes[1], "scope": "abc123"}))
    ns, ifname = netns_name(nodes[1], "team", "web", "abc123"), host_ifname(nodes[1], "team", "web", "abc123")
    create_pod_netns(ns, ifname, subnet + "9")
    try:
        out = _nodemesh(
            "--data-dir", str(tmp_path), "exec", "web", "-n", "team", "--", "ip", "-4", "-o", "addr", "show"
        )
        assert out.returncode == 0, out.stderr
        assert f"{subnet}9/32" in out.stdout and "eth0" in out.stdout
        assert "127.0.50" not in out.stdout  # not the host's namespace
        missing = _nodemesh("--data-dir", str(tmp_path), "exec", "nope", "--", "true")
        assert missing.returncode == 1 and "no network namespace" in missing.stderr
        # without a pod resolv.conf (pod with the host's DNS) the command sees the host's file
        host_resolv = Path("/etc/resolv.conf").read_text()
        seen = _nodemesh(
            "--data-dir", str(tmp_path), "exec", "web", "-n", "team", "--", "cat", "/etc/resolv.conf"
        )
        assert seen.returncode == 0 and seen.stdout == host_resolv, seen.stderr
        # with the one the datapath wrote for the pod (cluster DNS), the command sees that one, as the
        # pod's workload does; the host's file stays as it was
        pod_resolv = "search team.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n"
        (node_dir / "pods").mkdir()
        (node_dir / "pods" / "team_web.resolv.conf").write_text(pod_resolv)
        seen = _nodemesh(
            "--data-dir", str(tmp_path), "exec", "web", "-n", "team", "--", "cat", "/etc/resolv.conf"
        )
        assert seen.returncode == 0 and seen.stdout == pod_resolv, seen.stderr
        assert Path("/etc/resolv.conf").read_text() == host_resolv
    finally:
        delete_pod_netns(ns, ifname)
