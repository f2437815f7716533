"""deploy/k8s against the Kubernetes OpenAPI schemas and against what each process reads.

No Kubernetes cluster exists here: each container's command, args, environment and mounted Secrets
are resolved as the kubelet would (``tests/deploy/manifests.py``) and loaded into the service's own
config Struct, so a flag, variable or file the service does not know fails here, not at rollout.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from localcluster import deploygen
from nodemesh.natsauth import ADMIN, cell_permissions, user_permissions
from services.identity.config import IdentityConfig
from tests.deploy.manifests import (
    NODES,
    config_class,
    container_env,
    expand,
    fields,
    k8s_docs,
    pod_spec,
    resolve,
    service_containers,
    workloads,
)

# The Kubernetes versions the manifests must be valid for: the oldest we claim and the newest schema.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CONTROL_PLANE = {"watcher", "identity", "xds", "operator"}
# Paths a process reads without a flag naming them: BCC compiles against the host kernel's headers.
# The datapath opens pods' namespaces at the path the runtime passes the plugin as CNI_NETNS.
READ_BY_CODE = {"datapath": {"/lib/modules", "/usr/src", "/var/run/netns"}}
# The datapath's capabilities (40-node-agents.yaml says why each); nothing else adds any but Envoy.
DATAPATH_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"}
ENVOY_CAPS = {"NET_ADMIN", "NET_BIND_SERVICE"}


def _ids(items: list[tuple[dict[str, Any], dict[str, Any], Any]]) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d, _c, _cls in items]


SERVICES = service_containers()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    errors = []
    for doc in k8s_docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not errors, errors


def test_the_schema_check_catches_a_misspelt_field() -> None:
    doc = next(d for d in k8s_docs() if d["kind"] == "StatefulSet")
    doc["spec"]["podManagmentPolicy"] = "Parallel"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("doc", "container", "cls"), SERVICES, ids=_ids(SERVICES))
def test_every_flag_and_variable_is_a_config_field(
    doc: Any, container: Any, cls: Any, tmp_path: Path
) -> None:
    known = fields(cls)
    for arg in container.get("args", []):
        if arg.startswith("--") and arg != "--config":
            assert arg[2:].replace("-", "_") in known, (
                f"{container['name']}: {arg} is no field of {cls.__name__}"
            )
    for e in container.get("env", []):
        if e["name"].startswith("NODEMESH_"):
            field = e["name"].removeprefix("NODEMESH_").lower()
            assert field in known, f"{container['name']}: {e['name']} is no field of {cls.__name__}"
    # And the process would start with them: load_config rejects unknown flags and bad values.
    for node in NODES:
        resolve(doc, container, cls, node, tmp_path)


@pytest.mark.parametrize(("doc", "container", "cls"), SERVICES, ids=_ids(SERVICES))
def test_streams_are_provisioned_with_three_replicas(
    doc: Any, container: Any, cls: Any, tmp_path: Path
) -> None:
    # The setting each process carries; the streams themselves are the provision Job's (R3).
    cfg = resolve(doc, container, cls, NODES[0], tmp_path)
    assert cfg.stream_replicas == 3, f"{container['name']}: NODEMESH_STREAM_REPLICAS must be 3"


@pytest.mark.parametrize(("doc", "container", "cls"), SERVICES, ids=_ids(SERVICES))
def test_health_and_metrics_are_reachable_and_scraped(
    doc: Any, container: Any, cls: Any, tmp_path: Path
) -> None:
    cfg = resolve(doc, container, cls, NODES[0], tmp_path)
    host, _, port = cfg.health_addr.rpartition(":")
    assert not ipaddress.ip_address(host).is_loopback, f"{container['name']}: health on {cfg.health_addr}"
    annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", container["name"]
    assert annotations.get("prometheus.io/port") == port, container["name"]
    assert int(port) in {p["containerPort"] for p in container.get("ports", [])}, container["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == int(port) and "host" not in get, (container["name"], probe)


@pytest.mark.parametrize(("doc", "container", "cls"), SERVICES, ids=_ids(SERVICES))
def test_every_process_is_its_own_nats_user(doc: Any, container: Any, cls: Any, tmp_path: Path) -> None:
    cells = {c.name: c for c in deploygen.K8S_CELLS}
    cell = cells[doc["metadata"]["name"]]
    for node in NODES:
        cfg = resolve(doc, container, cls, node, tmp_path)
        assert cfg.nats_user == cell.user(node) and cfg.nats_password, (container["name"], node)


def test_every_mount_is_read_by_the_process(tmp_path: Path) -> None:
    for doc in workloads():
        spec = pod_spec(doc)
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            cls = config_class(c["command"][0])
            env = container_env(c, NODES[0])
            words = [expand(a, env) for a in [*c["command"], *c.get("args", [])]]
            if cls is not None:
                cfg = resolve(doc, c, cls, NODES[0], tmp_path)
                words += [v for v in (getattr(cfg, f) for f in fields(cls)) if isinstance(v, str)]
            if c["name"] == "nats":
                words += ["/data/jetstream"]  # nats.conf's store_dir (checked below)
            words += [t for w in words for t in w.split()]  # `sh -c` scripts, word by word
            if "--host-root" in words:
                # nodemesh-cni install: host paths, written under --host-root (tests/deploy/test_k8s_cni.py)
                root = words[words.index("--host-root") + 1]
                words += [root.rstrip("/") + w for w in words if w.startswith("/")]
            for m in c.get("volumeMounts", []):
                path = m["mountPath"]
                used = any(w == path or w.startswith(path + "/") for w in words)
                used = used or path in READ_BY_CODE.get(doc["metadata"]["name"], set())
                assert used, f"{doc['metadata']['name']}/{c['name']}: nothing reads {path}"


def test_identity_reads_the_mounted_ca(tmp_path: Path) -> None:
    doc, c, cls = next(s for s in SERVICES if s[0]["metadata"]["name"] == "identity")
    cfg = resolve(doc, c, cls, NODES[0], tmp_path)
    assert isinstance(cfg, IdentityConfig)
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    ca = [
        m
        for m in c["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == "nodemesh-ca"
    ]
    assert len(ca) == 1 and ca[0]["mountPath"] == cfg.ca_dir, "pass --ca-dir <the Secret's mount>"
    assert not volumes[ca[0]["name"]]["secret"].get("optional"), "identity cannot run without its CA"


def _by_name(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_nats_forms_a_cluster() -> None:
    sts = _by_name("StatefulSet", "nats")
    # OrderedReady would wait for nats-0's readiness, which needs a JetStream quorum: never.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    c = pod_spec(sts)["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz?js-server-only=true"
    conf = _by_name("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "store_dir: /data/jetstream" in conf and "include auth.conf" in conf
    sources = pod_spec(sts)["volumes"][0]["projected"]["sources"]
    assert {
        "secret": {"name": "nodemesh-nats-server", "items": [{"key": "auth.conf", "path": "auth.conf"}]}
    } in sources


def test_nats_users_are_the_cells() -> None:
    # The generated Secrets hold exactly one user per deployed cell (per node for per-node ones),
    # each with its cell's permissions, and nobody else but the CLI's admin.
    secrets = {s["metadata"]["name"]: s["stringData"] for s in deploygen.k8s_secrets(NODES)}
    auth = secrets["nodemesh-nats-server"]["auth.conf"]
    expected = user_permissions(deploygen.K8S_CELLS, NODES)
    users = [line.split('user: "', 1)[1].split('"', 1)[0] for line in auth.splitlines() if 'user: "' in line]
    assert sorted(users) == sorted(expected)
    for cell in deploygen.K8S_CELLS:
        for node in NODES if cell.per_node else [""]:
            perms = cell_permissions(cell, node)
            line = next(x for x in auth.splitlines() if f'user: "{cell.user(node)}"' in x)
            assert all(f'"{s}"' in line for s in perms.publish + perms.subscribe), cell.user(node)
    assert ADMIN in users and "dns" not in users
    client_files = {k for name, data in secrets.items() if name != "nodemesh-nats-server" for k in data}
    assert client_files == {f"{u}.json" for u in expected}


def test_security_contexts_grant_least_privilege() -> None:
    for doc in workloads():
        name, spec = doc["metadata"]["name"], pod_spec(doc)
        pod_sc = spec.get("securityContext", {})
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            caps = sc.get("capabilities", {})
            assert not sc.get("privileged"), f"{name}: no long-running container is privileged"
            assert caps.get("drop") == ["ALL"], f"{name}: drop every capability, add back what it needs"
            added = set(caps.get("add", []))
            # no_new_privs means nothing next to SYS_ADMIN (kube-apiserver refuses CAP_SYS_ADMIN with it).
            sys_admin = bool(added & {"SYS_ADMIN", "CAP_SYS_ADMIN"})
            assert sc.get("allowPrivilegeEscalation") is (None if sys_admin else False), name
            if name == "datapath":
                assert added <= DATAPATH_CAPS and "NET_ADMIN" in added and "BPF" in added, added
            elif name == "envoy":
                assert added == ENVOY_CAPS, f"envoy needs NET_ADMIN for its transparent listeners: {added}"
            else:
                assert not added, f"{name} needs no capability: {added}"
                assert pod_sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True, name
        for c in spec.get("initContainers", []):
            assert name == "datapath", (name, c["name"])
            sc = c.get("securityContext", {})
            if c["name"] == "mount-bpf-fs":
                # The one-shot bpffs mount is privileged: Bidirectional propagation requires it.
                assert sc == {"privileged": True}, sc
                continue
            # install-cni writes into root-owned host directories it mounts: root, but no capability.
            assert c["name"] == "install-cni", c["name"]
            assert sc.get("capabilities") == {"drop": ["ALL"]}, sc
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True


def test_cluster_dns_is_not_deployed_on_kubernetes() -> None:
    # CoreDNS serves kube-dns on Kubernetes; local mode's DNS address must appear nowhere.
    from localcluster.layout import DNS_ADDR

    text = "".join(
        p.read_text() for p in sorted((Path(__file__).parents[2] / "deploy" / "k8s").glob("*.yaml"))
    )
    assert "nodemesh-dns" not in text and "services.dns" not in text and DNS_ADDR not in text
    for _doc, c, _cls in SERVICES:
        assert "NODEMESH_CLUSTER_DNS" not in {e["name"] for e in c.get("env", [])}


def test_envoy_args_are_the_launchers_flags() -> None:
    from localcluster.envoy import parser

    ds = next(d for d in workloads() if d["metadata"]["name"] == "envoy")
    c = pod_spec(ds)["containers"][0]
    assert c["command"] == ["nodemesh-envoy"]
    env = container_env(c, NODES[0])
    ns = parser().parse_args([expand(a, env) for a in c["args"]])  # SystemExit on an unknown flag
    assert ns.node == NODES[0] and ns.xds_addr == "xds.nodemesh-system.svc:18000"
    # The datapath serves access logs on <its data dir>/als.sock; Envoy mounts that directory.
    dp = next(d for d in workloads() if d["metadata"]["name"] == "datapath")
    dp_c = pod_spec(dp)["containers"][0]
    data_dir = dp_c["args"][dp_c["args"].index("--data-dir") + 1]
    assert ns.als_socket == f"{data_dir}/als.sock"
    dp_host = {v["name"]: v for v in pod_spec(dp)["volumes"]}
    envoy_host = {v["name"]: v for v in pod_spec(ds)["volumes"]}
    dp_state = next(m for m in dp_c["volumeMounts"] if m["mountPath"] == data_dir)
    envoy_state = next(m for m in c["volumeMounts"] if ns.als_socket.startswith(m["mountPath"] + "/"))
    assert (
        dp_host[dp_state["name"]]["hostPath"]["path"] == envoy_host[envoy_state["name"]]["hostPath"]["path"]
    )


def test_the_admin_step_provisions_streams_as_admin() -> None:
    """Services may not create streams: a Job does it, as `admin`, with the Secret's admin key."""
    from meshctl.main import build_parser

    job = _by_name("Job", "nodemesh-provision")
    c = job["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(c["args"])
    assert (args.nats_command, args.replicas) == ("provision", 3)
    vol = job["spec"]["template"]["spec"]["volumes"][0]["secret"]
    secrets = {s["metadata"]["name"]: s["stringData"] for s in deploygen.k8s_secrets(NODES)}
    assert args.config.rsplit("/", 1)[1] in secrets[vol["secretName"]]
    assert '"nats_user": "admin"' in secrets[vol["secretName"]]["admin.json"]
