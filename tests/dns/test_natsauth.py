"""The DNS service's NATS user is a read-only K8S consumer: against a real nats-server configured by
``nodemesh.natsauth.local_auth``, it follows the stream (the allowed twin) and cannot publish cluster
state, status patches or KV writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dns.rcode
import nats
import pytest
from nats.aio.client import Client

from localcluster.cells import CELLS
from nodemesh import subjects
from nodemesh.bus import Bus, connect
from nodemesh.codec import encode
from nodemesh.k8scache import K8sCache
from nodemesh.messages.k8s import Synced
from nodemesh.natsauth import local_auth
from nodemesh.streams import provision, wait_provisioned
from testkit.k8sobjects import namespace, service
from testkit.natsserver import NatsServer
from tests.dns.harness import addresses, dns_service, eventually, mark_synced, put, query

Creds = dict[str, dict[str, str]]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, Creds]]:
    config, creds = local_auth(CELLS, ["node-1"], str(tmp_path))
    with NatsServer(config=config) as server:
        yield server, creds


@pytest.fixture
async def dns_client(secured: tuple[NatsServer, Creds]) -> AsyncIterator[tuple[Client, list[str]]]:
    server, creds = secured
    admin = await nats.connect(server.url, user="admin", password=creds["admin"]["password"])
    await provision(admin.jetstream())
    await admin.jetstream().publish(subjects.K8S_SYNCED, encode(Synced(watcher="w", epoch=1, stream_seq=0)))
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(server.url, user="dns", password=creds["dns"]["password"], error_cb=on_error)
    yield nc, errors
    await nc.close()
    await admin.close()


async def _violation(errors: list[str], subject: str) -> bool:
    for _ in range(100):
        if any("permissions violation" in e and subject.lower() in e for e in errors):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_dns_user_follows_k8s_but_cannot_publish_cluster_state(
    dns_client: tuple[Client, list[str]],
) -> None:
    nc, errors = dns_client
    await wait_provisioned(nc.jetstream())  # what the service runtime does at start
    cache = K8sCache(Bus(nc))
    await cache.start()
    await cache.wait_synced(timeout=10)  # the allowed twin: reading the K8S stream works
    await cache.stop()
    assert not [e for e in errors if "permissions violation" in e], errors

    forged = [
        subjects.k8s_object("service", "kube-system", "kube-dns"),
        subjects.K8S_SYNCED,
        subjects.k8s_status("service", "demo", "web"),
        "$KV.ipcache.10-96-0-10",
        "$KV.leases.watcher",
        subjects.flows("node-1"),
    ]
    for subject in forged:
        await nc.publish(subject, b"forged")
    await nc.flush()
    for subject in forged:
        assert await _violation(errors, subject), subject
    evil = subjects.k8s_object("pod", "demo", "evil")
    with pytest.raises(nats.errors.TimeoutError):  # through JetStream too: never stored, never acked
        await nc.jetstream().publish(evil, b"x", timeout=1)
    assert await _violation(errors, evil)


async def test_dns_service_runs_as_its_user(secured: tuple[NatsServer, Creds]) -> None:
    server, creds = secured
    server.provision("admin", creds["admin"]["password"])
    watcher = await connect(server.url, name="watcher", user="watcher", password=creds["watcher"]["password"])
    for obj in (namespace("demo"), service("web", ip="10.96.0.44")):
        await put(watcher, obj)
    await mark_synced(watcher)
    async with dns_service(server.url, nats_user="dns", nats_password=creds["dns"]["password"]) as run:

        async def answers() -> bool:
            resp = await query(run.addr, "web.demo.svc.cluster.local")
            return resp.rcode() == dns.rcode.NOERROR and addresses(resp) == ["10.96.0.44"]

        await eventually(answers, what="served under the dns user")
    await watcher.nc.close()
