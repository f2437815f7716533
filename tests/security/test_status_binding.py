"""Attacks on Pod status through status patches (issue 12: "status patches are applied to the
kind/name in the payload, not the subject: any datapath can rewrite any Pod's status.podIP, which
maps an attacker's IP to the victim's identity cluster-wide").

Real nats-server with the local cluster's users and permissions, the real watcher service as its
own NATS user applying patches to a local API server that requires a token (the watcher reads it
from a file, as in local mode). The attacker holds node-2's datapath credentials; the victim pod
runs on node-1. After each batch of attacks a legitimate patch is published on the same work queue:
once it shows, everything published before it has been handled, so the checks need no sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from localcluster.apiserver.app import LocalApi
from localcluster.cells import CELLS, DATAPATH
from localcluster.layout import ensure_api_token
from nodemesh import subjects
from nodemesh.codec import encode
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import StatusPatch
from nodemesh.natsauth import local_auth
from testkit.natsserver import NatsServer
from tests.localapi.helpers import until
from tests.watcher.harness import InProcessWatcher

POD = by_kind("Pod")
VICTIM_IP = "10.244.1.10"
ATTACKER_IP = "10.244.2.66"
As = Callable[[str], Awaitable[tuple[Client, list[str]]]]


class Env:
    def __init__(self, api: LocalApi, as_user: As) -> None:
        self.api = api
        self.as_user = as_user

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.api.store.get(POD, "default", name).get("status") or {})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    data = tmp_path / "cluster"
    token = ensure_api_token(data)
    api = LocalApi(data, nodes=2, bookmark_interval=0.5, token=token)
    await api.start()
    for name, node in (("victim", "node-1"), ("mine", "node-2")):
        api.store.create(
            POD,
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            },
        )
    config, creds = local_auth(CELLS, ["node-1", "node-2"], str(tmp_path / "nats-creds"))
    clients: list[Client] = []
    with NatsServer(config=config) as server:
        server.provision("admin", creds["admin"]["password"])

        async def as_user(user: str) -> tuple[Client, list[str]]:
            errors: list[str] = []

            async def on_error(e: Exception) -> None:
                errors.append(str(e).lower())

            nc = await nats.connect(
                server.url, user=user, password=creds[user]["password"], error_cb=on_error
            )
            clients.append(nc)
            return nc, errors

        w = await InProcessWatcher(
            server.url,
            api.url,
            "w",
            nats_user="watcher",
            nats_password=creds["watcher"]["password"],
            api_token_file=str(data / "api" / "token"),
        ).start()
        try:
            yield Env(api, as_user)
        finally:
            for nc in clients:
                await nc.close()
            await w.stop()
            await api.stop()


def _patch(name: str, status: dict[str, Any]) -> bytes:
    return encode(StatusPatch(kind="Pod", api_version="v1", namespace="default", name=name, status=status))


async def test_a_node_cannot_claim_another_nodes_pod_or_rewrite_a_pod_ip(env: Env) -> None:
    node1, _ = await env.as_user(DATAPATH.user("node-1"))
    node2, errors = await env.as_user(DATAPATH.user("node-2"))

    # The victim's own node reports its address: applied (the allowed twin).
    await node1.publish(
        subjects.k8s_node_status("node-1", "Pod", "default", "victim"), _patch("victim", {"podIP": VICTIM_IP})
    )
    await until(lambda: env.status("victim").get("podIP") == VICTIM_IP, 30, "victim's own node reports")

    evil = {"podIP": ATTACKER_IP, "podIPs": [{"ip": ATTACKER_IP}], "phase": "Evil"}
    # 1. On the old, unbound subject: NATS refuses the publish.
    unbound = subjects.k8s_status("Pod", "default", "victim")
    await node2.publish(unbound, _patch("victim", evil))
    # 2. On node-2's own subject, naming the victim (on node-1): the watcher refuses it.
    await node2.publish(
        subjects.k8s_node_status("node-2", "Pod", "default", "victim"), _patch("victim", evil)
    )
    # 3. The subject names node-2's own pod, the payload the victim: refused.
    await node2.publish(subjects.k8s_node_status("node-2", "Pod", "default", "mine"), _patch("victim", evil))
    # 4. Even the victim's own node cannot move an address once set.
    await node1.publish(
        subjects.k8s_node_status("node-1", "Pod", "default", "victim"),
        _patch("victim", {"podIP": ATTACKER_IP}),
    )
    # 5. node-2 names node-1 in the subject: NATS refuses the publish.
    forged_from = subjects.k8s_node_status("node-1", "Pod", "default", "victim")
    await node2.publish(forged_from, _patch("victim", evil))
    await node2.flush()

    # A legitimate patch after them all; once it shows, the attacks above were handled.
    await node2.publish(
        subjects.k8s_node_status("node-2", "Pod", "default", "mine"), _patch("mine", {"phase": "Running"})
    )
    await until(lambda: env.status("mine").get("phase") == "Running", 30, "node-2's own pod reported")
    await node1.publish(
        subjects.k8s_node_status("node-1", "Pod", "default", "victim"), _patch("victim", {"phase": "Running"})
    )
    await until(lambda: env.status("victim").get("phase") == "Running", 30, "victim's node reports phase")

    st = env.status("victim")
    assert st["podIP"] == VICTIM_IP and "podIPs" not in st and st["phase"] == "Running", st
    for subject in (unbound, forged_from):
        assert any("permissions violation" in e and subject.lower() in e for e in errors), (subject, errors)
