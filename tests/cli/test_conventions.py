"""kubectl's conventions in `nodemesh get/describe/logs/version`, against a real local API server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meshctl.main import main

OBJS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {tier: front}}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {tier: back}}
spec:
  selector: {app: db}
  ports:
  - {name: pg, port: 5432, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
- addresses: [10.244.2.7]
  conditions: {ready: false}
"""


def nm(cluster: Path, *args: str) -> int:
    return main(["--data-dir", str(cluster), *args])


@pytest.fixture
def shop(api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    src = tmp_path / "shop.yaml"
    src.write_text(OBJS)
    assert nm(api_cluster, "apply", "-f", str(src)) == 0
    capsys.readouterr()
    return api_cluster


def test_get_with_a_label_selector_and_name_output(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nm(shop, "get", "svc", "-n", "shop", "-l", "tier=front", "-o", "name") == 0
    assert capsys.readouterr().out.split() == ["service/web"]
    assert nm(shop, "get", "svc", "-n", "shop", "-l", "tier in (front,back)", "-o", "json") == 0
    assert sorted(i["metadata"]["name"] for i in json.loads(capsys.readouterr().out)["items"]) == [
        "db",
        "web",
    ]
    assert nm(shop, "get", "svc", "-n", "shop", "-l", "tier=none") == 0
    assert "No services found in namespace shop." in capsys.readouterr().err
    assert nm(shop, "get", "svc", "web", "-n", "shop", "-l", "tier=front") == 2


def test_a_bad_selector_is_a_clear_error(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nm(shop, "get", "svc", "-n", "shop", "-l", "tier in (") == 1
    assert "error:" in capsys.readouterr().err


def test_get_watch_prints_the_list_then_each_change(shop: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshctl.main",
            "--data-dir",
            str(shop),
            "get",
            "svc",
            "-n",
            "shop",
            "-w",
            "-o",
            "name",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
        assert sorted(first) == ["service/db", "service/web"]
        extra = tmp_path / "cache.yaml"
        extra.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: cache, namespace: shop}\n"
            "spec: {ports: [{port: 6379}]}\n"
        )
        assert nm(shop, "apply", "-f", str(extra)) == 0
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and line != "service/cache":
            line = proc.stdout.readline().strip()
        assert line == "service/cache"
    finally:
        proc.terminate()
        proc.wait(10)


def test_describe_a_service_shows_ports_and_endpoints_with_readiness(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nm(shop, "describe", "service", "web", "-n", "shop") == 0
    out = capsys.readouterr().out
    assert "Name:" in out and "web" in out and "Type:" in out and "ClusterIP" in out
    assert "Selector:" in out and "app=web" in out
    assert "10.244.1.5:8080" in out and "10.244.2.7:8080 (not ready)" in out
    assert nm(shop, "describe", "service", "nope", "-n", "shop") == 1
    assert "service/nope not found" in capsys.readouterr().err


def test_describe_shows_conditions_of_a_gateway(
    shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "shop"},
        "spec": {
            "gatewayClassName": "nodemesh",
            "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}],
        },
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(gw))
    assert nm(shop, "apply", "-f", str(tmp_path / "gw.yaml")) == 0
    capsys.readouterr()
    assert nm(shop, "describe", "gateway", "gw", "-n", "shop") == 0
    out = capsys.readouterr().out
    assert "GatewayClass:" in out and "nodemesh" in out
    assert "http: HTTP :80" in out and "Conditions:" in out


def test_logs_of_a_process_and_of_a_pod(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (shop / "logs").mkdir(exist_ok=True)
    (shop / "logs" / "xds.log").write_text("one\ntwo\nthree\n")
    pods = shop / "nodes" / "node-2" / "pods"
    pods.mkdir(parents=True)
    (pods / "shop_web-1.log").write_text("GET / 200\n")
    assert nm(shop, "logs", "xds", "--tail", "2") == 0
    assert capsys.readouterr().out == "two\nthree\n"
    assert nm(shop, "logs", "web-1", "-n", "shop") == 0
    assert capsys.readouterr().out == "GET / 200\n"
    assert nm(shop, "logs", "nope") == 1
    err = capsys.readouterr().err
    assert "no process 'nope'" in err and "xds" in err


def test_version_shows_client_and_cluster(
    shop: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert nm(shop, "version", "-o", "json") == 0
    v = json.loads(capsys.readouterr().out)
    assert v["client"] and "cluster" in v
    assert nm(str(tmp_path / "nothing"), "version") == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("nodemesh ") and out[1].startswith("Cluster: none running")
