"""Attacks on a real local cluster (`nodemesh up --nodes 2`) by a local user and by a node.

Issue 12: "the local API server has no authentication"; "nats.conf with every password and the API
store are written 0644 under a 0755 data dir"; and, end to end, the ADS and JetStream attacks of
the other modules against what `nodemesh up` actually runs. The local user is ``nobody`` (a real
other uid, through setpriv); a node is a holder of that node's credentials from the data dir.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from nodemesh.streams import STREAM_K8S
from services.xds.snapshot import LISTENER
from tests.xds.ads_client import AdsClient

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


def nm(d: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshctl.main", "--data-dir", str(d), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("seccluster")
    try:
        up = nm(d, "up", "--nodes", "2", "--timeout", "240")
        assert up.returncode == 0, up.stdout + up.stderr
        yield d
    finally:
        nm(d, "down")


def _info(d: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((d / "run" / "cluster.json").read_text())
    return data


def _get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_local_api_refuses_a_request_without_the_token(cluster: Path) -> None:
    api = str(_info(cluster)["api_url"])
    token = (cluster / "api" / "token").read_text().strip()
    for path in (
        "/api/v1/secrets",
        "/api/v1/namespaces/default/pods",
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
    ):
        assert _get(api + path, None) == 401, path
        assert _get(api + path, "not-the-token") == 401, path
        assert _get(api + path, token) == 200, path  # the allowed twin
    # Writes too: a forged Pod is refused before it reaches the store.
    req = urllib.request.Request(
        api + "/api/v1/namespaces/default/pods",
        data=json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evil"}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    # The CLI and the watchers use the token file: the cluster works.
    got = nm(cluster, "get", "nodes")
    assert got.returncode == 0 and "node-2" in got.stdout, got.stdout + got.stderr


SECRET_FILES = (
    "nats/nats.conf",
    "run/credentials.json",
    "api/store.db",
    "api/token",
    "pki/ca.key",
    "pki/server/tls.key",
    "pki/nodes/node-1/tls.key",
    "pki/nodes/node-2/tls.key",
    "nodes/node-1/envoy/bootstrap.json",
)


def test_no_other_local_user_reads_a_password_key_or_the_store(cluster: Path) -> None:
    assert stat.S_IMODE(cluster.stat().st_mode) == 0o700
    for rel in SECRET_FILES:
        p = cluster / rel
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (rel, oct(p.stat().st_mode))
        assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700, (rel, oct(p.parent.stat().st_mode))
    for f in (cluster / "api").iterdir():  # the store, its -wal/-shm and the token
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    ca_keys = list((cluster / "identity").rglob("ca.key"))
    assert ca_keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in ca_keys)
    # The attack itself: another uid tries to read them (and to list the data dir).
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    for rel in (*SECRET_FILES, "."):
        target = cluster / rel
        cmd = ["ls", str(target)] if target.is_dir() else ["cat", str(target)]
        done = subprocess.run([*as_nobody, *cmd], capture_output=True, text=True, timeout=10)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (rel, done.stdout[:200])
    # The allowed twin: the owner reads them.
    assert "authorization" in (cluster / "nats" / "nats.conf").read_text()


def _creds(d: Path, node: str) -> grpc.ChannelCredentials:
    n = d / "pki" / "nodes" / node
    return grpc.ssl_channel_credentials(
        (n / "ca.crt").read_bytes(), (n / "tls.key").read_bytes(), (n / "tls.crt").read_bytes()
    )


async def _stream_error(c: AdsClient) -> grpc.StatusCode | None:
    for _ in range(200):
        if c.error is not None or c.received:
            break
        await asyncio.sleep(0.05)
    return c.error.code() if isinstance(c.error, grpc.aio.AioRpcError) else None


async def test_the_clusters_xds_serves_only_the_node_a_certificate_names(cluster: Path) -> None:
    port = int(str(_info(cluster)["xds_addr"]).rpartition(":")[2])
    async with AdsClient(port, "node-1") as plain:
        await plain.request(LISTENER)
        assert await _stream_error(plain) == grpc.StatusCode.UNAVAILABLE
        assert plain.received == []
    async with AdsClient(port, "node-1", creds=_creds(cluster, "node-2")) as forged:
        await forged.request(LISTENER)
        assert await _stream_error(forged) == grpc.StatusCode.PERMISSION_DENIED
        assert forged.received == []
    async with AdsClient(port, "node-2", creds=_creds(cluster, "node-2")) as honest:
        await honest.request(LISTENER)
        await honest.recv(30)  # the allowed twin: node-2 as itself is served
    # And both nodes' Envoys came up over mTLS (their admin /ready needs the initial xDS fetch).
    status = json.loads(nm(cluster, "status", "-o", "json").stdout)
    envoys = [p for p in status["processes"] if p["service"] == "envoy"]
    assert len(envoys) == 2 and all(p["ready"] for p in envoys), envoys


async def test_a_node_user_cannot_seal_the_clusters_k8s_stream(cluster: Path) -> None:
    creds = json.loads((cluster / "run" / "credentials.json").read_text())
    url = str(_info(cluster)["nats_url"])
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    user = creds["datapath-node-2"]
    nc = await nats.connect(url, user=user["user"], password=user["password"], error_cb=on_error)
    try:
        js = nc.jetstream(timeout=1.0)
        info = await js.stream_info(STREAM_K8S.name)  # the allowed twin: it reads the stream
        with pytest.raises(Exception):  # noqa: B017 (a refused request is never answered)
            await js.update_stream(dataclasses.replace(info.config, sealed=True))
        for _ in range(150):
            if any("permissions violation" in e and "stream.update.k8s" in e for e in errors):
                break
            await asyncio.sleep(0.02)
        assert any("permissions violation" in e and "stream.update.k8s" in e for e in errors), errors
        assert not (await js.stream_info(STREAM_K8S.name)).config.sealed
    finally:
        await nc.close()


def test_the_data_dir_is_not_world_readable_even_if_created_by_hand(tmp_path: Path) -> None:
    """`nodemesh up` tightens a data dir a user made with a permissive umask (no cluster needed)."""
    from localcluster.supervisor import Options, Supervisor

    d = tmp_path / "loose"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    Supervisor(Options(data_dir=str(d), nodes=1)).plan()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "nats" / "nats.conf").stat().st_mode) == 0o600
