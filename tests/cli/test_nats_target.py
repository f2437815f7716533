"""The NATS-backed commands against a cluster named by options, not the local data dir: a real
nats-server with users and least-privilege permissions (nodemesh.natsauth), credentials passed as
the deployments' Secret file or as user and password, bad credentials refused with a clear error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.cells import CELLS
from meshctl.main import main
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import encode
from nodemesh.messages.flow import Flow
from nodemesh.messages.identity import Identity
from nodemesh.natsauth import local_auth
from nodemesh.streams import BUCKET_IDENTITIES, identity_key
from testkit.natsserver import NatsServer


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    config, creds = local_auth(CELLS, ["node-a"], str(tmp_path / "users"))
    with NatsServer(config=config) as server:
        admin = creds["admin"]["password"]
        server.provision(user="admin", password=admin)

        async def seed() -> None:
            bus = await connect(server.url, name="seed", user="admin", password=admin, max_wait=10)
            try:
                kv = await bus.kv(BUCKET_IDENTITIES.name)
                await kv.put(identity_key(4242), encode(Identity(id=4242, labels=["k8s:app=remote"])))
                flow = Flow(
                    time="2026-01-01T00:00:00.000000000Z",
                    verdict="DROPPED",
                    node_name="node-a",
                    drop_reason_desc="POLICY_DENIED",
                    Summary="remote flow",
                )
                await bus.js_publish(subjects.flows("node-a"), flow)
            finally:
                await bus.nc.close()

        asyncio.run(seed())
        yield server.url, creds


def _secret(tmp_path: Path, user: str, password: str) -> str:
    p = tmp_path / f"{user}.json"
    p.write_text(json.dumps({"nats_user": user, "nats_password": password}))
    return str(p)


def test_identity_and_observe_with_a_credentials_file(
    remote: tuple[str, dict[str, dict[str, str]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, creds = remote
    secret = _secret(tmp_path, "admin", creds["admin"]["password"])
    # A data dir with no cluster: only the options can have led the commands to the server.
    empty = str(tmp_path / "no-cluster")
    args = ["--data-dir", empty]
    assert main([*args, "identity", "list", "--nats-url", url, "--nats-creds", secret, "-o", "json"]) == 0
    out = capsys.readouterr().out
    assert "4242" in out and "k8s:app=remote" in out
    assert (
        main([*args, "observe", "--nats-url", url, "--nats-creds", secret, "--last", "5", "-o", "json"]) == 0
    )
    assert "remote flow" in capsys.readouterr().out


def test_user_and_password_options_and_refusals(
    remote: tuple[str, dict[str, dict[str, str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, creds = remote
    empty = ["--data-dir", str(tmp_path / "no-cluster")]
    monkeypatch.setenv("NODEMESH_NATS_PASSWORD", creds["admin"]["password"])
    assert main([*empty, "identity", "get", "4242", "--nats-url", url, "--nats-user", "admin"]) == 0
    assert "k8s:app=remote" in capsys.readouterr().out
    monkeypatch.delenv("NODEMESH_NATS_PASSWORD")
    # A wrong password: a clear error, not a traceback.
    bad = [
        "identity",
        "list",
        "--nats-url",
        url,
        "--nats-user",
        "admin",
        "--nats-password",
        "wrong",
        "--nats-timeout",
        "1",
    ]
    assert main([*empty, *bad]) == 1
    assert "cannot connect to NATS" in capsys.readouterr().err
    # A credentials file that is neither format, and a missing CA file.
    junk = tmp_path / "junk"
    junk.write_text("not credentials")
    assert main([*empty, "identity", "list", "--nats-url", url, "--nats-creds", str(junk)]) == 1
    assert "neither JSON" in capsys.readouterr().err
    assert main([*empty, "observe", "--nats-url", url, "--nats-ca", str(tmp_path / "no-ca.pem")]) == 1
    assert "--nats-ca" in capsys.readouterr().err


def test_status_of_a_remote_cluster_lists_its_services(
    remote: tuple[str, dict[str, dict[str, str]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator runs as its own least-privilege NATS user; ``status --nats-url`` sees it answer."""
    url, creds = remote
    own = _secret(tmp_path, "operator", creds["operator"]["password"])
    log = (tmp_path / "operator.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.operator",
            "--nats-url",
            url,
            "--config",
            own,
            "--health-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "op"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    admin = _secret(tmp_path, "admin", creds["admin"]["password"])
    try:
        args = [
            "--data-dir",
            str(tmp_path / "no-cluster"),
            "status",
            "--nats-url",
            url,
            "--nats-creds",
            admin,
        ]
        for _ in range(60):
            assert main([*args, "-o", "json"]) == 0
            st = json.loads(capsys.readouterr().out)
            if "nodemesh-operator" in st["services"]:
                break
        assert st["services"]["nodemesh-operator"]["instances"] == 1
        assert {"K8S", "STATUS"} <= {s["name"] for s in st["streams"]}
        assert "leases" in {b["name"] for b in st["buckets"]}
        assert main(args) == 0
        assert "nodemesh-operator" in capsys.readouterr().out
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
