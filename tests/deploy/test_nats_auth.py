"""The generated NATS configurations run in a real nats-server: each deployment's users log in with
the credentials their processes are given, provision the streams, and a wrong password is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from localcluster import deploygen
from localcluster.compose import COMPOSE_CONTEXT
from nodemesh.streams import missing
from testkit.natsserver import NatsServer
from tests.deploy.manifests import DEPLOY, NODES, k8s_docs

CLUSTER_BLOCK = re.compile(r"^cluster \{.*?^\}\n", re.S | re.M)


def _standalone(conf: str) -> str:
    """A deployment's nats.conf on a free loopback port: no listen/monitor lines (the fixture passes
    -a/-p), no cluster block (its routes name Kubernetes pods); everything else as deployed."""
    conf = CLUSTER_BLOCK.sub("", conf)
    return "\n".join(
        line for line in conf.splitlines() if not re.match(r"\s*(listen|http|jetstream)\b", line)
    )


async def _login(url: str, user: str, password: str) -> None:
    nc = await nats.connect(
        url, user=user, password=password, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        await missing(nc.jetstream())  # every service checks the streams first; its cell must allow it
    finally:
        await nc.close()


async def _refused(url: str, user: str) -> None:
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        nc = await nats.connect(
            url, user=user, password="wrong", allow_reconnect=False, max_reconnect_attempts=0
        )
        await nc.close()


async def test_k8s_nats_config_with_generated_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = next(d for d in k8s_docs() if d["metadata"]["name"] == "nats-config")["data"]["nats.conf"]
    secrets = {s["metadata"]["name"]: s["stringData"] for s in deploygen.k8s_secrets(NODES)}
    # The pod's /etc/nats: the ConfigMap's nats.conf next to the Secret's auth.conf (it is included).
    (tmp_path / "auth.conf").write_text(secrets["nodemesh-nats-server"]["auth.conf"])
    monkeypatch.setenv("POD_NAME", "nats-0")
    with NatsServer(store_dir=str(tmp_path), config=_standalone(conf)) as server:
        creds = [
            json.loads(v)
            for name, data in secrets.items()
            if name != "nodemesh-nats-server"
            for v in data.values()
        ]
        assert {c["nats_user"] for c in creds} >= {"watcher", f"datapath-{NODES[1]}", f"authd-{NODES[0]}"}
        for c in creds:
            await _login(server.url, c["nats_user"], c["nats_password"])
        await _refused(server.url, "identity")


async def test_compose_nats_config_with_generated_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = list(COMPOSE_CONTEXT.nodes)
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    assert conf == deploygen.compose_nats_conf(nodes), "make compose: deploy/compose/nats.conf is stale"
    env = dict(
        line.split("=", 1)
        for line in deploygen.compose_env(nodes).splitlines()
        if line and not line.startswith("#")
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    users = deploygen.compose_users(nodes)
    with NatsServer(store_dir=str(tmp_path), config=_standalone(conf)) as server:
        for user in users:
            await _login(server.url, user, env[deploygen.password_var(user)])
        await _refused(server.url, f"datapath-{nodes[0]}")


def test_compose_passwords_survive_nats_variable_substitution() -> None:
    # nats-server parses a substituted variable as a value: a leading digit or '-' makes it a number.
    for _ in range(200):
        assert re.fullmatch(r"nm[0-9a-f]{48}", deploygen.new_password())


def test_k8s_secrets_cli_keeps_existing_passwords(tmp_path: Path) -> None:
    # After adding a node, re-running with --keep must not change the running processes' passwords.
    import base64
    import subprocess
    import sys

    import kubernetes_validate
    import yaml

    def run(*args: str) -> list[dict[str, object]]:
        cmd = [sys.executable, "-m", "localcluster.deploygen", "k8s-secrets", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    first = run("--nodes", "a,b")
    for doc in first:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    # What `kubectl get secret … -o json` returns: a List of Secrets with base64 data.
    items = [
        {"data": {k: base64.b64encode(v.encode()).decode() for k, v in d["stringData"].items()}}  # type: ignore[attr-defined]
        for d in first
    ]
    (tmp_path / "old.json").write_text(json.dumps({"kind": "List", "items": items}))
    second = run("--nodes", "a,b,c", "--keep", str(tmp_path / "old.json"))

    def creds(docs: list[dict[str, object]]) -> dict[str, str]:
        out = {}
        for d in docs:
            for k, v in d["stringData"].items():  # type: ignore[attr-defined]
                if k.endswith(".json"):
                    c = json.loads(v)
                    out[c["nats_user"]] = c["nats_password"]
        return out

    old, new = creds(first), creds(second)
    assert set(new) == set(old) | {"datapath-c", "authd-c"}
    assert all(new[u] == old[u] for u in old)
    assert new["datapath-c"] not in old.values()
    bad = subprocess.run(
        [sys.executable, "-m", "localcluster.deploygen", "k8s-secrets", "--nodes", ","],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--nodes" in bad.stderr
