"""``nodemesh identity|ipcache|trust`` as a user runs them (a subprocess against a local cluster dir)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
from cryptography import x509

from localcluster.layout import ClusterInfo, NodeSpec
from nodemesh.bus import Bus
from testkit.natsserver import NatsServer

from .conftest import Cluster, RunReplica, eventually, ipcache_entry


async def _cli(data_dir: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshctl.main",
        "--data-dir",
        str(data_dir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_lists_identities_ipcache_and_bundle(
    nats_server: NatsServer, bus: Bus, cluster: Cluster, run_replica: RunReplica, tmp_path: Path
) -> None:
    d = tmp_path / "cluster"
    (d / "run").mkdir(parents=True)
    info = ClusterInfo(
        data_dir=str(d),
        nats_url=nats_server.url,
        api_url="",
        xds_addr="",
        nodes=[NodeSpec(name="node-1", index=1, address="127.0.50.1", pod_cidr="10.244.1.0/24")],
    )
    (d / "run" / "cluster.json").write_bytes(msgspec.json.encode(info))
    await cluster.namespace("shop")
    await cluster.node("node-1", "127.0.50.1", "10.244.1.0/24")
    await cluster.pod("shop", "web-1", {"app": "web"}, "node-1", "10.244.1.5")
    await cluster.synced()
    await run_replica()
    web = await eventually(lambda: ipcache_entry(bus, "10.244.1.5"), what="web-1")
    await eventually(lambda: ipcache_entry(bus, "127.0.50.1"), what="node entry")

    code, out, err = await _cli(d, "identity", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "LABELS", "REFS", "NODES"]
    row = next(line for line in lines if line.startswith(f"{web.identity} "))
    assert "app=web" in row and row.split()[-2:] == ["1", "node-1"]
    assert any(line.startswith("6 ") and "reserved:remote-node" in line for line in lines)

    code, out, err = await _cli(d, "identity", "get", str(web.identity))
    assert code == 0, err
    assert (
        "k8s:io.kubernetes.pod.namespace=shop" in out
        and "node-1/shop/web-1" in out
        and "Nodes:      node-1" in out
    )
    code, out, err = await _cli(d, "identity", "get", "4242")
    assert code == 1 and "identity 4242 not found" in err

    code, out, err = await _cli(d, "ipcache", "list", "-o", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["ip"], r["identity"], r["pod"]) for r in rows} == {
        ("10.244.1.5", web.identity, "web-1"),
        ("127.0.50.1", 6, ""),
    }
    code, out, err = await _cli(d, "ipcache", "list")
    assert code == 0 and "6 (remote-node)" in out and "shop/web-1" in out

    code, out, err = await _cli(d, "trust", "bundle")
    assert code == 0, err
    roots = x509.load_pem_x509_certificates(out.encode())
    assert len(roots) == 1 and "PRIVATE" not in out
    code, out, err = await _cli(d, "trust", "rotate", "--reason", "test")
    assert code == 0 and "previous root trusted until" in out, err
    code, out, err = await _cli(d, "trust", "bundle")
    assert len(x509.load_pem_x509_certificates(out.encode())) == 2
