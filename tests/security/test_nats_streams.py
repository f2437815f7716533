"""Attacks on JetStream state by a node-level NATS user (issue 12: "every node-level NATS user may
update every stream: one node can seal stream K8S for good, shrink retention to wipe state, or add a
republish rule that relays forged content past subject permissions").

A real nats-server runs with the users and permissions of a local cluster (nodemesh/natsauth.py);
``admin`` provisions, as the supervisor does. Each attack is refused by nats-server (a permissions
violation naming the JetStream API subject) and, checked as admin afterwards, changed nothing; the
same user can still do what its service needs (read the stream), so the refusals are not an outage.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RePublish, StreamConfig

from localcluster.cells import AUTHD, CELLS, DATAPATH, XDS
from nodemesh import subjects
from nodemesh.codec import encode
from nodemesh.messages.k8s import Synced
from nodemesh.natsauth import local_auth
from nodemesh.streams import STREAM_K8S, missing, provision
from testkit.natsserver import NatsServer

NODES = ["node-1", "node-2"]
ATTACKERS = [DATAPATH.user("node-1"), AUTHD.user("node-2"), XDS.user()]
Client_ = tuple[Client, list[str]]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Client_]]]:
    config, creds = local_auth(CELLS, NODES, str(tmp_path))
    clients: list[Client] = []
    with NatsServer(config=config) as server:

        async def as_user(user: str) -> Client_:
            errors: list[str] = []

            async def on_error(e: Exception) -> None:
                errors.append(str(e).lower())

            nc = await nats.connect(
                server.url, user=user, password=creds[user]["password"], error_cb=on_error
            )
            clients.append(nc)
            return nc, errors

        admin, _ = await as_user("admin")
        await provision(admin.jetstream())
        await admin.jetstream().publish(
            subjects.K8S_SYNCED, encode(Synced(watcher="w", epoch=1, stream_seq=0))
        )
        yield as_user
        for nc in clients:
            await nc.close()


async def _refused(errors: list[str], api: str) -> bool:
    for _ in range(150):
        if any("permissions violation" in e and api.lower() in e for e in errors):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("user", ATTACKERS)
async def test_a_service_user_cannot_seal_purge_delete_or_rewrite_a_stream(
    cluster: Callable[[str], Awaitable[Client_]], user: str
) -> None:
    admin, _ = await cluster("admin")
    before = await admin.jetstream().stream_info(STREAM_K8S.name)
    assert before.state.messages == 1
    nc, errors = await cluster(user)
    js = nc.jetstream(timeout=1.0)

    # The allowed twin: the service reads the stream it needs.
    assert (await js.stream_info(STREAM_K8S.name)).config.name == STREAM_K8S.name
    assert await missing(js) == []

    cfg = before.config
    attacks: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("STREAM.UPDATE.K8S", lambda: js.update_stream(dataclasses.replace(cfg, sealed=True))),
        ("STREAM.UPDATE.K8S", lambda: js.update_stream(dataclasses.replace(cfg, max_age=1.0, max_msgs=1))),
        (
            "STREAM.UPDATE.K8S",
            lambda: js.update_stream(
                dataclasses.replace(cfg, republish=RePublish(src="k8s.obj.>", dest="auth.granted.node-1"))
            ),
        ),
        ("STREAM.PURGE.K8S", lambda: js.purge_stream(STREAM_K8S.name)),
        ("STREAM.MSG.DELETE.K8S", lambda: js.delete_msg(STREAM_K8S.name, 1)),
        ("STREAM.DELETE.K8S", lambda: js.delete_stream(STREAM_K8S.name)),
        ("STREAM.CREATE.EVIL", lambda: js.add_stream(StreamConfig(name="EVIL", subjects=["auth.>"]))),
        ("STREAM.DELETE.KV_trust", lambda: js.delete_stream("KV_trust")),
    ]
    for api, attack in attacks:
        errors.clear()
        with pytest.raises(Exception):  # noqa: B017 (the server never answers a refused request)
            await attack()
        assert await _refused(errors, f"$JS.API.{api}"), (user, api, errors)

    after = await admin.jetstream().stream_info(STREAM_K8S.name)
    assert after.config == before.config
    assert after.state.messages == 1
    names = [s.config.name for s in await admin.jetstream().streams_info()]
    assert "EVIL" not in names and "KV_trust" in names


async def test_only_the_admin_step_provisions(tmp_path: Path) -> None:
    """`nodemesh nats provision` (the compose one-shot and the Kubernetes Job) works as admin only."""
    from meshctl.main import main as cli

    config, creds = local_auth(CELLS, NODES, str(tmp_path))
    with NatsServer(config=config) as server:
        for user, code in ((DATAPATH.user("node-1"), 1), ("admin", 0)):
            cred = tmp_path / f"{user}.json"
            cred.write_text(f'{{"nats_user": "{user}", "nats_password": "{creds[user]["password"]}"}}')
            args = ["nats", "provision", "--nats-url", server.url, "--config", str(cred), "--max-wait", "5"]
            assert await asyncio.to_thread(cli, args) == code, user
        admin = await nats.connect(server.url, user="admin", password=creds["admin"]["password"])
        try:
            assert await missing(admin.jetstream()) == []
        finally:
            await admin.close()
