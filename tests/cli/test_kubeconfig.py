"""`--kubeconfig`/`--context`/`$KUBECONFIG`: the resource commands through the official kubernetes client,
against a server speaking the real protocol (the local API server: no kube-apiserver package exists here)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import yaml

from localcluster.layout import ClusterInfo, load_api_token
from meshctl.main import main
from testkit.natsserver import free_port

SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {tier: front}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"""


def _kubeconfig(path: Path, server: str, token: str) -> Path:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server}},
            {"name": "gone", "cluster": {"server": dead}},
        ],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [
            {"name": "local", "context": {"cluster": "local", "user": "me"}},
            {"name": "gone", "context": {"cluster": "gone", "user": "me"}},
        ],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _server(api_cluster: Path) -> str:
    info = msgspec.json.decode((api_cluster / "run" / "cluster.json").read_bytes(), type=ClusterInfo)
    return info.api_url


def test_resource_commands_through_a_kubeconfig(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODEMESH_DATA_DIR", raising=False)
    kc = _kubeconfig(tmp_path / "kubeconfig", _server(api_cluster), load_api_token(str(api_cluster)))
    (tmp_path / "svc.yaml").write_text(SVC)
    assert main(["--kubeconfig", str(kc), "apply", "-f", str(tmp_path / "svc.yaml")]) == 0
    assert "service/web created" in capsys.readouterr().out
    assert main(["--kubeconfig", str(kc), "get", "svc", "-l", "tier=front", "-o", "name"]) == 0
    assert capsys.readouterr().out.split() == ["service/web"]
    assert main(["--kubeconfig", str(kc), "describe", "svc", "web"]) == 0
    assert "app=web" in capsys.readouterr().out
    # $KUBECONFIG works like --kubeconfig, as with kubectl
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert main(["get", "svc", "web", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["clusterIP"]
    assert main(["delete", "svc", "web"]) == 0
    assert "service/web deleted" in capsys.readouterr().out
    assert main(["get", "svc", "web"]) == 1
    assert "service/web not found" in capsys.readouterr().err


def test_the_kubeconfigs_token_is_what_authenticates(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kc = _kubeconfig(tmp_path / "kubeconfig", _server(api_cluster), "not-the-token")
    assert main(["--kubeconfig", str(kc), "get", "pods"]) == 1
    assert "error:" in capsys.readouterr().err


def test_an_unreachable_context_and_a_broken_kubeconfig_are_clear_errors(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kc = _kubeconfig(tmp_path / "kubeconfig", _server(api_cluster), load_api_token(str(api_cluster)))
    assert main(["--kubeconfig", str(kc), "--context", "gone", "get", "pods"]) == 1
    assert "cannot reach the API server at http://127.0.0.1:" in capsys.readouterr().err
    assert main(["--kubeconfig", str(kc), "--context", "nope", "get", "pods"]) == 1
    assert "cannot load kubeconfig" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed\n")
    assert main(["--kubeconfig", str(bad), "get", "pods"]) == 1
    assert "cannot load kubeconfig" in capsys.readouterr().err
