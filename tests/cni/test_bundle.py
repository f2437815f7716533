"""``nodemesh-cni install --bundle-dir``: the plugin as a node without Python runs it.

The container runtime executes the plugin on the host; the bundle carries the interpreter, its shared
libraries (loader and libc included), the standard library and the plugin's packages. These tests run
the installed launcher with an empty environment and read, from inside the running interpreter, every
file it mapped and every path it imports from: all inside the bundle.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni import bundle
from cni.install import CONFLIST, PLUGIN, install

SOCKET = "/var/run/nodemesh/cni.sock"
# Imports the plugin's modules, then reports what the process mapped and where Python looks.
PROBE = """
import json, sys
import cni.plugin, cni.netlink, cni.client, msgspec, pyroute2
maps = {line.split()[-1] for line in open("/proc/self/maps") if len(line.split()) >= 6}
files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
print(json.dumps({
    "maps": sorted(p for p in maps if p.startswith("/")),
    "path": sys.path,
    "files": sorted(f for f in files if f),
    "executable": sys.executable,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node")
    install(
        root / "opt/cni/bin",
        root / "etc/cni/net.d",
        "standalone",
        SOCKET,
        "/nonexistent/python",
        bundle_dir=root / "opt/nodemesh-cni",
    )
    return root


def _run(exe: Path, env: dict[str, str], stdin: bytes) -> tuple[int, Any]:
    # An empty environment but the CNI variables, as a runtime that sets nothing else would.
    p = subprocess.run([str(exe)], input=stdin, env=env, capture_output=True, timeout=60)
    out = p.stdout.decode().strip()
    return p.returncode, json.loads(out) if out else None


def _conf() -> bytes:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "n", "type": PLUGIN, "socket": "/nonexistent.sock"}
    ).encode()


def test_the_bundled_plugin_runs_with_an_empty_environment(installed: Path) -> None:
    exe = installed / "opt/cni/bin" / PLUGIN
    assert "/nonexistent/python" not in exe.read_text(), "the bundle's interpreter, not --python"
    code, doc = _run(exe, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0 and doc["supportedVersions"][-1] == "1.0.0"
    cni = {"CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0"}
    code, doc = _run(exe, {"CNI_COMMAND": "ADD", "CNI_PATH": "/opt/cni/bin", **cni}, _conf())
    assert code == 1 and doc["code"] == 11 and "not reachable" in doc["msg"], doc
    # DEL for a container nobody knows, with no datapath: success (idempotent), pyroute2 included.
    code, doc = _run(exe, {"CNI_COMMAND": "DEL", "CNI_PATH": "/opt/cni/bin", **cni}, _conf())
    assert (code, doc) == (0, None)


def test_the_bundled_interpreter_uses_nothing_of_the_hosts_userland(installed: Path) -> None:
    exe = installed / "opt/cni/bin" / PLUGIN
    script = exe.read_text()
    assert '-S -P -m cni "$@"' in script
    probe = installed / "probe.sh"
    probe.write_text(script.replace('-S -P -m cni "$@"', '-S -P -c "$PROBE"'))
    probe.chmod(0o755)
    code, doc = _run(probe, {"PROBE": PROBE}, b"")
    assert code == 0, doc
    b = bundle.launcher_bundle(script)
    assert b is not None and Path(b).is_dir()
    inside = [p for p in doc["maps"] if p.startswith(b + "/")]
    # The loader, libc and the extension modules are mapped, and from the bundle only.
    names = {Path(p).name for p in inside}
    assert {"libc.so.6"} <= names and any(n.startswith("ld-linux") for n in names), names
    assert any(n.startswith("_core.") for n in names), "msgspec's extension module"
    assert [p for p in doc["maps"] if not p.startswith(b + "/")] == []
    assert all(p.startswith(b + "/") for p in doc["path"]), doc["path"]
    assert all(f.startswith(b + "/") for f in doc["files"]), [f for f in doc["files"] if b not in f]


def test_install_writes_host_paths_under_the_host_root(tmp_path: Path) -> None:
    # The init container mounts the host's directories under /host and names the host's paths.
    host = tmp_path / "host"
    kept = host / "opt/nodemesh-cni/prev"
    stale = host / "opt/nodemesh-cni/stale"
    for d in (kept, stale):
        d.mkdir(parents=True)
    exe = host / "opt/cni/bin" / PLUGIN
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nB=/opt/nodemesh-cni/prev\n")  # the launcher of the running version
    out = install(
        Path("/opt/cni/bin"),
        Path("/etc/cni/net.d"),
        "standalone",
        SOCKET,
        "unused",
        bundle_dir=Path("/opt/nodemesh-cni"),
        host_root=host,
    )
    assert out == host / "etc/cni/net.d" / CONFLIST
    b = bundle.launcher_bundle(exe.read_text())
    assert b is not None and b.startswith("/opt/nodemesh-cni/") and b != "/opt/nodemesh-cni/prev"
    assert (host / b.lstrip("/") / "site/cni/plugin.py").is_file()
    # The bundle a plugin started before the upgrade may still use stays; older ones go.
    assert sorted(p.name for p in (host / "opt/nodemesh-cni").iterdir()) == sorted(["prev", Path(b).name])
    assert json.loads(out.read_text())["plugins"] == [{"type": PLUGIN, "socket": SOCKET}]
