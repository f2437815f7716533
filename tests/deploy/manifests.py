"""Reading deploy/k8s the way the kubelet would: a container's flags, environment and mounted
Secrets, resolved on a given node into the service's own config Struct."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import yaml

from localcluster import deploygen
from nodemesh.config import ServiceConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NODES = ["worker-a", "worker-b.example.internal"]
"""Node names the Secrets are generated for (a dotted one, as cloud providers name nodes)."""
FIELD_VALUES = {"spec.nodeName": None, "status.hostIP": "10.0.0.7", "metadata.name": "pod-0"}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def workloads() -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def scripts() -> dict[str, str]:
    declared: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return declared


def config_class(command: str) -> type[ServiceConfig] | None:
    """The config Struct of the service a console script runs (None: not a nodemesh service)."""
    target = scripts().get(command, "")
    if not target.startswith("services."):
        return None
    module = importlib.import_module(target.split(".")[0] + "." + target.split(".")[1] + ".config")
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceConfig) and v is not ServiceConfig
    ]
    assert len(found) == 1, (command, found)
    return found[0]


def service_containers() -> list[tuple[dict[str, Any], dict[str, Any], type[ServiceConfig]]]:
    """(workload, container, config class) of every nodemesh service container."""
    out = []
    for doc in workloads():
        for c in pod_spec(doc)["containers"]:
            cls = config_class(c["command"][0])
            if cls is not None:
                out.append((doc, c, cls))
    return out


def config_map(name: str) -> dict[str, str]:
    """The data of a ConfigMap the manifests define (KeyError: none by that name)."""
    found = [d for d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    assert found, f"no ConfigMap {name} in deploy/k8s"
    data: dict[str, str] = found[0]["data"]
    return data


def container_env(c: dict[str, Any], node: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
        elif "configMapKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = config_map(ref["name"])[ref["key"]]
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in FIELD_VALUES, (c["name"], e)
            env[e["name"]] = FIELD_VALUES[path] or node
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of command and args."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg)


def mounted_file(doc: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(Secret name, key) a file path in the container comes from, if a Secret volume holds it."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    for m in c.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        vol = volumes[m["name"]]
        secret = vol.get("secret")
        if secret is None:
            return None
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        if items:
            return (secret["secretName"], items[rel]) if rel in items else None
        return secret["secretName"], rel
    return None


def secrets_for(nodes: list[str]) -> dict[str, dict[str, str]]:
    """Secret name → stringData, as `python -m localcluster.deploygen k8s-secrets` prints them."""
    return {s["metadata"]["name"]: s["stringData"] for s in deploygen.k8s_secrets(nodes)}


def resolve(
    doc: dict[str, Any], c: dict[str, Any], cls: type[ServiceConfig], node: str, tmp: Path
) -> ServiceConfig:
    """The config the container's process would run with on ``node``: its args with ``$(VAR)``
    expanded, its NODEMESH_* environment, and ``--config`` read from the generated Secret."""
    env = container_env(c, node)
    args = [expand(a, env) for a in c.get("args", [])]
    if "--config" in args:
        i = args.index("--config") + 1
        source = mounted_file(doc, c, args[i])
        assert source is not None, f"{c['name']}: --config {args[i]} is not in a mounted Secret"
        name, key = source
        data = secrets_for(NODES).get(name, {})
        assert key in data, f"{c['name']}: Secret {name} has no key {key} (deploygen k8s-secrets)"
        f = tmp / f"{c['name']}-{key}"
        f.write_text(data[key])
        args[i] = str(f)
    nm_env = {k: v for k, v in env.items() if k.startswith("NODEMESH_")}
    return load_config(cls, args, nm_env)


def fields(cls: type[ServiceConfig]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(cls)}
