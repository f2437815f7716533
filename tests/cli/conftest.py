"""A real local API server (`python -m localcluster.apiserver`) per test, found via run/cluster.json."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from localcluster.layout import ClusterInfo, NodeSpec
from testkit.natsserver import free_port


@pytest.fixture
def api_cluster(tmp_path: Path) -> Iterator[Path]:
    port = free_port()
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcluster.apiserver",
            "--data-dir",
            str(tmp_path),  # the cluster's data dir: the CLI finds the API token in <dir>/api/token
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "API server not ready in 60s"
            time.sleep(0.1)
        info = ClusterInfo(
            data_dir=str(tmp_path),
            nats_url="nats://127.0.0.1:1",
            api_url=f"http://127.0.0.1:{port}",
            xds_addr="127.0.0.1:1",
            nodes=[NodeSpec(name="node-1", index=1, address="127.0.50.1", pod_cidr="10.244.1.0/24")],
        )
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "cluster.json").write_bytes(msgspec.json.encode(info))
        yield tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
