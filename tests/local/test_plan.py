"""The supervisor's plan: ports, run files, per-process argv/env, one user per process; no Envoy, no plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster import supervisor as sup
from localcluster.layout import ClusterInfo
from localcluster.processes import PROCESSES
from nodemesh.errors import NodemeshError
from nodemesh.netns import scope_for


def test_plan_writes_run_files_and_wires_every_process(tmp_path: Path) -> None:
    s = sup.Supervisor(
        sup.Options(data_dir=str(tmp_path), nodes=2, manifests=str(tmp_path)), progress=lambda _m: None
    )
    procs = {p.state.name: p for p in s.plan()}
    expected = {"nats", "apiserver", "watcher-0", "watcher-1", "identity", "xds", "operator", "dns"}
    expected |= {f"{svc}@node-{i}" for svc in ("datapath", "authd", "envoy") for i in (1, 2)}
    assert set(procs) == expected

    import msgspec

    cluster = msgspec.json.decode((tmp_path / "run" / "cluster.json").read_bytes(), type=ClusterInfo)
    assert [(n.name, n.pod_cidr, n.address) for n in cluster.nodes] == [
        ("node-1", "10.244.1.0/24", "127.0.50.1"),
        ("node-2", "10.244.2.0/24", "127.0.50.2"),
    ]
    creds_path = tmp_path / "run" / "credentials.json"
    assert creds_path.stat().st_mode & 0o777 == 0o600
    creds = json.loads(creds_path.read_text())
    conf = (tmp_path / "nats" / "nats.conf").read_text()
    assert f"listen: {cluster.nats_url.removeprefix('nats://')}" in conf and "jetstream" in conf

    ports = [p.state.health_port for p in procs.values() if p.state.health_port]
    assert len(ports) == len(set(ports))
    for name, p in procs.items():
        assert p.env["NODEMESH_CLUSTER_DATA_DIR"] == str(tmp_path)
        if p.spec.service in ("nats", "apiserver", "envoy"):
            continue
        argv = p.argv
        assert argv[1:3] == ["-m", p.spec.module]
        assert argv[argv.index("--nats-url") + 1] == cluster.nats_url
        assert argv[argv.index("--health-addr") + 1] == f"127.0.0.1:{p.state.health_port}"
        if creds:  # nodemesh.natsauth present: every NATS client has its own user
            user = p.spec.nats_user.format(node=p.state.node or "node-1")
            assert p.env["NODEMESH_NATS_USER"] == user, name
            assert p.env["NODEMESH_NATS_PASSWORD"] == creds[user]["password"]
    api = procs["apiserver"]
    assert api.argv[api.argv.index("--manifests") + 1] == str(tmp_path)
    assert procs["watcher-0"].env.get("NODEMESH_WATCHER_ID") == "watcher-0"
    assert procs["watcher-1"].env.get("NODEMESH_API_URL") == cluster.api_url
    # cluster DNS: the server listens on the DNS address, which kube-dns' EndpointSlice names
    assert cluster.dns_addr == "169.254.20.10" and cluster.cluster_dns == "10.96.0.10"
    assert procs["dns"].env["NODEMESH_LISTEN"] == "169.254.20.10:53"
    assert api.argv[api.argv.index("--dns-addr") + 1] == cluster.dns_addr
    # every node's datapath pins in one scope directory (the L7 redirect's shared connection table
    # lives there: a cross-node L7 connection hangs without it), and another cluster has its own
    scopes = {procs[f"datapath@node-{i}"].env["NODEMESH_SCOPE"] for i in (1, 2)}
    assert len(scopes) == 1 and scopes != {scope_for(str(tmp_path / "other"))}


def test_missing_envoy_is_an_error_not_a_partial_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sup, "envoy_binary", lambda: None)
    s = sup.Supervisor(sup.Options(data_dir=str(tmp_path), nodes=1), progress=lambda _m: None)
    with pytest.raises(NodemeshError, match="envoy binary not found"):
        s.plan()


def test_user_environment_does_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEMESH_NATS_URL", "nats://elsewhere:1")
    s = sup.Supervisor(sup.Options(data_dir=str(tmp_path), nodes=1), progress=lambda _m: None)
    for p in s.plan():
        assert p.env.get("NODEMESH_NATS_URL") is None


def test_every_table_entry_has_a_probe_and_script() -> None:
    for spec in PROCESSES:
        assert spec.script and spec.probe in ("readyz", "apiserver", "nats", "envoy")
