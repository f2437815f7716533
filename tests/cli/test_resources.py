"""`nodemesh apply/get/delete` against a real local API server, as a user runs them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from meshctl.main import main

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: shop
  labels: {team: a}
spec:
  parentRefs:
  - name: gw
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /cart}
    backendRefs:
    - {name: web, port: 80, weight: 3}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: allow-routes
  namespace: shop
spec:
  from:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}
  to:
  - {group: "", kind: Service}
"""


def nm(cluster: Path, *args: str) -> int:
    return main(["--data-dir", str(cluster), *args])


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def names(cluster: Path, capsys: pytest.CaptureFixture[str], kind: str, ns: str) -> list[str]:
    capsys.readouterr()
    assert nm(cluster, "get", kind, "-n", ns, "-o", "json") == 0
    return [i["metadata"]["name"] for i in json.loads(capsys.readouterr().out)["items"]]


def test_apply_get_delete_round_trip(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, "good.yaml", GOOD)
    assert nm(api_cluster, "apply", "-f", str(src)) == 0
    out = capsys.readouterr().out
    assert "httproute.gateway.networking.k8s.io/web created" in out
    assert "namespace/shop created" in out

    assert nm(api_cluster, "get", "httproute", "web", "-n", "shop", "-o", "yaml") == 0
    got = yaml.safe_load(capsys.readouterr().out)
    sent = list(yaml.safe_load_all(GOOD))[2]
    assert got["kind"] == "HTTPRoute" and got["metadata"]["name"] == "web"
    assert got["metadata"]["labels"] == {"team": "a"}
    for key, value in sent["spec"].items():
        assert got["spec"][key] == value, key

    # The YAML `get` printed applies again unchanged (status and server fields are ignored), and
    # apply says so, as kubectl does; a real change is "configured".
    again = write(tmp_path, "again.yaml", yaml.safe_dump(got))
    assert nm(api_cluster, "apply", "-f", str(again)) == 0
    assert "httproute.gateway.networking.k8s.io/web unchanged" in capsys.readouterr().out
    got["metadata"]["labels"]["team"] = "b"
    again.write_text(yaml.safe_dump(got))
    assert nm(api_cluster, "apply", "-f", str(again)) == 0
    assert "httproute.gateway.networking.k8s.io/web configured" in capsys.readouterr().out
    assert nm(api_cluster, "get", "httproute", "web", "-n", "shop", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["spec"] == got["spec"]

    # Table output has the route's columns.
    assert nm(api_cluster, "get", "httproutes", "-A") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAMESPACE", "NAME", "HOSTNAMES", "ACCEPTED"]
    assert table[1].split()[:3] == ["shop", "web", "shop.example.com"]

    assert nm(api_cluster, "delete", "-f", str(src)) == 0
    assert "httproute.gateway.networking.k8s.io/web deleted" in capsys.readouterr().out
    assert names(api_cluster, capsys, "httproutes", "shop") == []
    assert nm(api_cluster, "get", "httproute", "web", "-n", "shop") == 1


def test_stdin_and_directory(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    docs = GOOD.split("---\n")
    write(d, "a.yaml", docs[0] + "---\n" + docs[1])
    (d / "notes.txt").write_text("not a manifest")
    assert nm(api_cluster, "apply", "-f", str(d)) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(docs[2]))
    assert nm(api_cluster, "apply", "-f", "-") == 0
    assert names(api_cluster, capsys, "svc", "shop") == ["web"]
    assert names(api_cluster, capsys, "httproutes", "shop") == ["web"]


MALFORMED = (
    GOOD
    + """\
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: broken
  namespace: shop
data: {a: [1, 2
"""
)


def test_one_malformed_document_applies_nothing(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, "bad.yaml", MALFORMED)
    assert nm(api_cluster, "apply", "-f", str(src)) == 1
    err = capsys.readouterr().err
    assert f"{src}: document 4: line " in err
    assert "malformed YAML" in err
    assert "nothing applied" in err
    assert nm(api_cluster, "get", "ns", "shop") == 1  # not even the valid documents before it
    assert names(api_cluster, capsys, "httproutes", "shop") == []


INVALID_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bad
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - path: {type: Prefix, value: /}
    backendRefs:
    - {name: web, port: 70000}
---
apiVersion: v1
kind: Service
metadata:
  name: fine
spec:
  ports: [{port: 80}]
"""


def test_schema_violations_name_each_field(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, "route.yaml", INVALID_ROUTE)
    assert nm(api_cluster, "apply", "-f", str(src)) == 1
    err = capsys.readouterr().err
    assert f"{src}: document 0: spec.rules[0].backendRefs[0].port: 70000 is greater than the maximum" in err
    assert f"{src}: document 0: spec.rules[0].matches[0].path.type: 'Prefix' is not one of" in err
    assert "(line 9)" in err and "(line 11)" in err
    assert names(api_cluster, capsys, "httproutes", "default") == []
    assert names(api_cluster, capsys, "services", "default") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Service\nmetadata: {name: a}\n", "document 0: apiVersion: required field is missing"),
        ("apiVersion: v1\nkind: Gizmo\nmetadata: {name: a}\n", "document 0: kind: unknown kind 'Gizmo'"),
        ("apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {}\n", "document 0: metadata.name: required"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: A_b}\nspec: {}\n",
            "metadata.name: 'A_b' is not a valid",
        ),
        ("- 1\n- 2\n", "document 0: line 1: a manifest must be a mapping"),
        ("apiVersion: v2\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", "apiVersion: 'v2'"),
    ],
    ids=["no-apiversion", "unknown-kind", "no-name", "bad-name", "not-a-mapping", "wrong-version"],
)
def test_bad_documents(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    src = write(tmp_path, "x.yaml", text)
    assert nm(api_cluster, "apply", "-f", str(src)) == 1
    assert expected in capsys.readouterr().err


def test_get_unknown_kind_and_missing_file(api_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nm(api_cluster, "get", "widgets") == 2
    assert "unknown kind 'widgets'" in capsys.readouterr().err
    assert nm(api_cluster, "apply", "-f", "/nonexistent/x.yaml") == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_get_nodes_table(api_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nm(api_cluster, "get", "nodes") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATUS", "POD-CIDR"]
    assert lines[1].split()[:3] == ["node-1", "Ready", "10.244.1.0/24"]


UNKNOWN_FIELD = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: nodemesh
  listenerz: []
  listeners:
  - {name: http, port: 80, protocol: HTTP}
"""


def test_unknown_fields_warn_by_default_and_fail_when_strict(
    api_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, "gw.yaml", UNKNOWN_FIELD)
    assert nm(api_cluster, "apply", "-f", str(src), "--validate", "strict") == 1
    assert f"error: {src}: document 0: spec.listenerz: unknown field (line 6)" in capsys.readouterr().err
    assert names(api_cluster, capsys, "gateways", "default") == []
    assert nm(api_cluster, "apply", "-f", str(src)) == 0
    captured = capsys.readouterr()
    assert f"warning: {src}: document 0: spec.listenerz: unknown field (line 6)" in captured.err
    assert "gateway.gateway.networking.k8s.io/gw created" in captured.out
