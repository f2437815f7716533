"""``nodemesh-cni`` as a runtime sees it, without a datapath: VERSION, errors as CNI error documents,
and what ``nodemesh-cni install`` writes. The plugin runs as the executable the install step writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni.install import CONFLIST, PLUGIN, install

NODEMESH_CNI = str(Path(sys.executable).parent / "nodemesh-cni")


def run(env: dict[str, str], stdin: bytes, exe: str = NODEMESH_CNI) -> tuple[int, Any]:
    p = subprocess.run(
        [exe], input=stdin, env={"PATH": os.environ["PATH"], **env}, capture_output=True, timeout=60
    )
    out = p.stdout.decode().strip()
    return p.returncode, json.loads(out) if out else None


def conf(**kw: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "net", "type": PLUGIN, **kw}).encode()


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_version_answers_the_requested_version_and_lists_supported(version: str) -> None:
    code, doc = run({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}).encode())
    assert code == 0
    assert doc == {"cniVersion": version, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/run/netns/none",
    "CNI_IFNAME": "eth0",
}


@pytest.mark.parametrize(
    ("env", "stdin", "code", "msg"),
    [
        ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "2.0.0"}', 1, "cniVersion 2.0.0 is not supported"),
        ({"CNI_COMMAND": "FROB"}, conf(), 4, "CNI_COMMAND must be one of"),
        ({**ADD_ENV, "CNI_NETNS": ""}, conf(), 4, "ADD needs CNI_NETNS"),
        ({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME"}, conf(), 4, "is not KEY=VALUE"),
        (ADD_ENV, b"{not json", 6, "not JSON"),
        (ADD_ENV, b"[]", 6, "not a JSON object"),
        (ADD_ENV, json.dumps({"cniVersion": "1.0.0", "type": PLUGIN}).encode(), 7, "needs a string 'name'"),
        (ADD_ENV, conf(socket="relative.sock"), 7, "'socket' must be an absolute path"),
        (ADD_ENV, conf(prevResult={"ips": []}), 7, "prevResult carries no IPv4 address"),
        ({**ADD_ENV, "CNI_COMMAND": "CHECK"}, conf(cniVersion="0.3.1"), 1, "CHECK needs cniVersion 0.4.0"),
    ],
)
def test_errors_are_cni_error_documents(env: dict[str, str], stdin: bytes, code: int, msg: str) -> None:
    rc, doc = run(env, stdin)
    assert rc != 0
    assert doc["code"] == code
    assert msg in doc["msg"]
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}


def test_add_without_a_datapath_fails_closed_with_try_again(tmp_path: Path) -> None:
    """Standalone ADD with nobody on the socket: code 11 (the runtime retries), the pod is not plumbed."""
    rc, doc = run(
        {**ADD_ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=d;K8S_POD_NAME=p"}, conf(socket=str(tmp_path / "s"))
    )
    assert rc == 1
    assert doc["code"] == 11
    assert "not reachable" in doc["msg"]


def test_install_standalone_writes_an_executable_plugin_and_a_conflist(tmp_path: Path) -> None:
    out = install(
        tmp_path / "bin", tmp_path / "net.d", "standalone", "/var/run/nodemesh/cni.sock", sys.executable
    )
    assert out == tmp_path / "net.d" / CONFLIST
    assert json.loads(out.read_text()) == {
        "cniVersion": "1.0.0",
        "name": "nodemesh",
        "plugins": [{"type": PLUGIN, "socket": "/var/run/nodemesh/cni.sock"}],
    }
    code, doc = run(
        {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', exe=str(tmp_path / "bin" / PLUGIN)
    )
    assert code == 0 and "1.0.0" in doc["supportedVersions"]


def test_install_chained_appends_to_the_network_the_runtime_uses_once(tmp_path: Path) -> None:
    net_d = tmp_path / "net.d"
    net_d.mkdir()
    bridge = {"cniVersion": "0.4.0", "name": "cbr0", "type": "bridge", "ipam": {"type": "host-local"}}
    (net_d / "10-bridge.conf").write_text(json.dumps(bridge))
    (net_d / "20-other.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": []}))
    for _ in range(2):  # an init container runs again on every pod restart
        out = install(tmp_path / "bin", net_d, "chained", "/s.sock", sys.executable)
    assert json.loads(out.read_text()) == {
        "cniVersion": "0.4.0",
        "name": "cbr0",
        "plugins": [
            {"type": "bridge", "ipam": {"type": "host-local"}},
            {"type": PLUGIN, "socket": "/s.sock"},
        ],
    }
    assert sorted(p.name for p in net_d.iterdir()) == [CONFLIST, "10-bridge.conf", "20-other.conflist"]
