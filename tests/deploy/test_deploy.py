"""deploy/: every file parses, compose is the process table's output, every command exists.

No container engine or Kubernetes cluster exists here, so these check structure, not a running
deployment.
"""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import compose
from localcluster.processes import PROCESSES, instance_name, service_args

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BINARIES = {"nats-server"}


def scripts() -> dict[str, str]:
    declared: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return declared


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def test_compose_is_generated_from_the_process_table() -> None:
    text = (DEPLOY / "compose" / "compose.yaml").read_text()
    assert text == compose.HEADER + yaml.safe_dump(compose.render(), sort_keys=False, width=120), (
        "deploy/compose/compose.yaml is stale: python -m localcluster.compose > deploy/compose/compose.yaml"
    )


def test_compose_commands_are_the_supervisor_entrypoints() -> None:
    services = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())["services"]
    ctx = compose.COMPOSE_CONTEXT
    expected = set()
    for spec in PROCESSES:
        placements = (
            [(0, n) for n in ctx.nodes]
            if spec.per_node
            else [(r, ctx.nodes[0]) for r in range(spec.replicas)]
        )
        for replica, node in placements:
            name = instance_name(spec, replica, node).replace("@", "-")
            expected.add(name)
            cmd = services[name]["command"]
            if spec.service == "nats":
                assert cmd == ["nats-server", "-c", "/etc/nats/nats.conf"]
                continue
            # The supervisor runs [sys.executable, "-m", module, *service_args(...)]: same module, same flags
            # (with the addresses a container on its network reaches).
            assert cmd[:3] == ["python", "-m", spec.module], name
            assert cmd[3:] == service_args(
                spec, compose.context(spec), node, compose.health_addr(spec, node)
            ), name
            assert importlib.util.find_spec(spec.module) is not None, spec.module
    # Plus the admin step: the one-shot that provisions streams as `admin` (services may not).
    assert set(services) == expected | {"provision"}
    assert services["provision"]["command"][:3] == ["nodemesh", "nats", "provision"]
    assert services["datapath-node-1"]["privileged"] is True


def test_compose_envoy_reaches_its_datapaths_access_log_socket() -> None:
    services = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())["services"]
    for node in compose.COMPOSE_CONTEXT.nodes:
        envoy, datapath = services[f"envoy-{node}"], services[f"datapath-{node}"]
        sock = envoy["command"][envoy["command"].index("--als-socket") + 1]
        shared = set(envoy.get("volumes", [])) & set(datapath.get("volumes", []))
        assert any(sock.startswith(v.split(":", 1)[1] + "/") for v in shared), (node, sock, shared)


def test_table_scripts_and_modules_agree() -> None:
    table = scripts()
    for spec in PROCESSES:
        if not spec.module:
            assert spec.script in BINARIES
            continue
        target = table[spec.script]
        module = target.split(":")[0]
        assert module in (spec.module, spec.module + ".__main__"), (spec.script, target)


@pytest.mark.parametrize("path", sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")))
def test_k8s_manifests_are_valid(path: str) -> None:
    from validation import validate_object

    for doc in yaml.safe_load_all((DEPLOY / "k8s" / path).read_text()):
        if not doc:
            continue
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "Service", "ConfigMap", "Namespace", "ServiceAccount"):
            assert validate_object(doc) == [], (path, doc["metadata"]["name"])


def test_k8s_commands_exist() -> None:
    table = scripts()
    seen = set()
    for doc in k8s_docs():
        for c in containers(doc):
            cmd = c["command"][0]
            seen.add(cmd)
            if cmd in BINARIES:
                continue
            module = table[cmd].split(":")[0]
            mod = importlib.import_module(module)
            assert hasattr(mod, table[cmd].split(":")[1]), cmd
    assert {
        "nodemesh-watcher",
        "nodemesh-identity",
        "nodemesh-xds",
        "nodemesh-datapath",
        "nodemesh-authd",
    } <= seen
    assert {"nodemesh-envoy", "nats-server"} <= seen


def test_k8s_shape() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    assert docs[("StatefulSet", "nats")]["spec"]["replicas"] == 3
    assert docs[("Deployment", "watcher")]["spec"]["replicas"] == 2
    for ds in ("datapath", "authd", "envoy"):
        assert ("DaemonSet", ds) in docs
    dp = docs[("DaemonSet", "datapath")]["spec"]["template"]["spec"]
    assert (
        dp["hostNetwork"] is True and "BPF" in dp["containers"][0]["securityContext"]["capabilities"]["add"]
    )
    role = docs[("ClusterRole", "nodemesh-watcher")]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    from nodemesh.kinds import KINDS

    assert {k.plural for k in KINDS} <= resources
    # Only the watcher's ServiceAccount is bound to any role.
    bindings = [d for d in docs.values() if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert [s["name"] for b in bindings for s in b["subjects"]] == ["nodemesh-watcher"]


def test_dockerfile_installs_the_project() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pip install" in text and "python3-bpfcc" in text
    # Like `make install`: only BCC's bindings come from Debian, never all of its site-packages.
    assert "--system-site-packages" not in text and 'find_spec("bcc")' in text


def test_dockerfile_copies_every_package_a_console_script_runs() -> None:
    # The image runs the console scripts (compose and the manifests name them): a package a script
    # lives in, and every package of ours that package imports at start, must be in the image.
    import tomllib

    text = (DEPLOY / "Dockerfile").read_text()
    scripts = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["scripts"]
    needed = {target.split(":")[0].split(".")[0] for target in scripts.values()}
    needed |= {"nodemesh", "validation", "echoserver"}  # the core; admission; demo pods' image
    missing = sorted(p for p in needed if f"COPY {p} ./{p}" not in text)
    assert not missing, f"deploy/Dockerfile does not copy {missing}"
