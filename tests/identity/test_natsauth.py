"""NATS least privilege against a real nats-server configured by ``nodemesh.natsauth.local_auth``.

Every refusal is paired with the allowed twin (same client, own subject), so a test cannot pass
because nothing works at all.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from localcluster.cells import AUTHD, CELLS, DATAPATH
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.k8scache import K8sCache
from nodemesh.messages.k8s import Synced
from nodemesh.natsauth import local_auth
from nodemesh.streams import ipcache_key, provision, wait_provisioned
from testkit.natsserver import NatsServer

NODES = ["node-a", "node-b"]
Connect = Callable[[str], Awaitable[tuple[Client, list[str]]]]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, dict[str, str]]]]:
    config, creds = local_auth(CELLS, NODES, str(tmp_path))
    with NatsServer(config=config) as server:
        yield server, creds


@pytest.fixture
async def connect_as(secured: tuple[NatsServer, dict[str, dict[str, str]]]) -> AsyncIterator[Connect]:
    server, creds = secured
    clients: list[Client] = []

    async def _connect(user: str) -> tuple[Client, list[str]]:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e).lower())

        nc = await nats.connect(server.url, user=user, password=creds[user]["password"], error_cb=on_error)
        clients.append(nc)
        return nc, errors

    yield _connect
    for nc in clients:
        await nc.close()


async def _violation(errors: list[str], subject: str) -> bool:
    """Wait for the server's permissions-violation error naming ``subject``."""
    for _ in range(100):
        if any("permissions violation" in e and subject.lower() in e for e in errors):
            return True
        await asyncio.sleep(0.02)
    return False


def test_credentials_file_is_private_and_stable(tmp_path: Path) -> None:
    config, creds = local_auth(CELLS, NODES, str(tmp_path))
    path = tmp_path / "run" / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(creds) == {
        "admin",
        "watcher",
        "identity",
        "xds",
        "operator",
        "dns",
        *(f(n) for n in NODES for f in (DATAPATH.user, AUTHD.user)),
    }
    assert len({c["password"] for c in creds.values()}) == len(creds)
    again, creds2 = local_auth(CELLS, [*NODES, "node-c"], str(tmp_path))
    assert creds2["identity"] == creds["identity"]  # a supervisor restart keeps passwords
    assert "datapath-node-c" in creds2 and "datapath-node-c" not in config and "datapath-node-c" in again


async def test_every_user_can_provision_and_follow_k8s(connect_as: Connect) -> None:
    admin, _ = await connect_as("admin")
    await provision(admin.jetstream())
    await admin.jetstream().publish(subjects.K8S_SYNCED, encode(Synced(watcher="w", epoch=1, stream_seq=0)))
    for user in [
        "watcher",
        "identity",
        "xds",
        "dns",
        *(f(n) for n in NODES for f in (DATAPATH.user, AUTHD.user)),
    ]:
        nc, errors = await connect_as(user)
        await wait_provisioned(nc.jetstream())  # what nodemesh.runtime does at start
        cache = K8sCache(Bus(nc))
        await cache.start()
        await cache.wait_synced(timeout=10)
        assert isinstance(cache.last_marker, Synced)
        await cache.stop()
        assert not [e for e in errors if "permissions violation" in e], (user, errors)


async def test_svid_sign_only_by_own_authd(connect_as: Connect) -> None:
    identity, _ = await connect_as("identity")

    async def sign(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await identity.subscribe(subjects.SVID_SIGN_ALL, queue="identity", cb=sign)
    await identity.flush()
    authd_a, errors_a = await connect_as(AUTHD.user("node-a"))
    reply = await authd_a.request(subjects.svid_sign("node-a"), b"csr", timeout=5)
    assert reply.data == b"svid.sign.node-a"  # allowed twin (reply delivered via allow_responses)
    with pytest.raises(nats.errors.TimeoutError):
        await authd_a.request(subjects.svid_sign("node-b"), b"csr", timeout=0.5)
    assert await _violation(errors_a, subjects.svid_sign("node-b"))

    datapath_a, errors_d = await connect_as(DATAPATH.user("node-a"))
    for node in NODES:
        with pytest.raises(nats.errors.TimeoutError):
            await datapath_a.request(subjects.svid_sign(node), b"csr", timeout=0.5)
        assert await _violation(errors_d, subjects.svid_sign(node))


async def test_node_cannot_publish_on_other_nodes_subjects(connect_as: Connect) -> None:
    admin, _ = await connect_as("admin")
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    await admin.subscribe("auth.>", cb=record)
    await admin.subscribe("flows.>", cb=record)
    await admin.flush()
    authd_a, errors = await connect_as(AUTHD.user("node-a"))
    datapath_a, derrors = await connect_as(DATAPATH.user("node-a"))
    await authd_a.publish(subjects.auth_granted("node-b"), b"v")
    await authd_a.publish(subjects.auth_revoked("node-b"), b"v")
    await datapath_a.publish(subjects.auth_required("node-b"), b"v")
    await datapath_a.publish(subjects.flows("node-b"), b"v")
    await datapath_a.publish(subjects.auth_granted("node-a"), b"v")  # verdicts are authd's, not datapath's
    await authd_a.publish(subjects.auth_granted("node-a"), b"v")  # allowed twins
    await datapath_a.publish(subjects.auth_required("node-a"), b"v")
    await authd_a.flush()
    await datapath_a.flush()
    for subject in (subjects.auth_granted("node-b"), subjects.auth_revoked("node-b")):
        assert await _violation(errors, subject)
    for subject in (
        subjects.auth_required("node-b"),
        subjects.flows("node-b"),
        subjects.auth_granted("node-a"),
    ):
        assert await _violation(derrors, subject)
    for _ in range(100):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert sorted(seen) == [subjects.auth_granted("node-a"), subjects.auth_required("node-a")]


async def test_only_identity_writes_identity_buckets(connect_as: Connect) -> None:
    admin, _ = await connect_as("admin")
    await provision(admin.jetstream())
    identity, _ = await connect_as("identity")
    kv = await identity.jetstream().key_value("identities")
    await kv.put("id.256", b"owned")
    # Through the KV API once (what a client would do) …
    datapath_a, derrors = await connect_as(DATAPATH.user("node-a"))
    forged = await datapath_a.jetstream().key_value("identities")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(forged.put("id.256", b"forged"), 1)
    assert await _violation(derrors, "$KV.identities.id.256")
    # … and on the raw subjects for every other user and bucket.
    for user in ["watcher", "xds", "dns", DATAPATH.user("node-b"), AUTHD.user("node-a")]:
        nc, errors = await connect_as(user)
        for bucket in ("identities", "ipcache", "nodes", "trust"):
            await nc.publish(f"$KV.{bucket}.id.256", b"forged")
            assert await _violation(errors, f"$KV.{bucket}.id.256")
        await nc.publish(subjects.IPCACHE_EVENTS, b"forged")
        assert await _violation(errors, subjects.IPCACHE_EVENTS)
    entry = await kv.get("id.256")
    assert entry.value == b"owned"


async def test_no_one_but_watcher_forges_cluster_state_or_replies(connect_as: Connect) -> None:
    datapath_a, errors = await connect_as(DATAPATH.user("node-a"))
    await datapath_a.publish(subjects.k8s_object("pod", "default", "evil"), b"x")
    await datapath_a.publish("_INBOX.someone-elses-request", b"forged reply")
    await datapath_a.flush()
    assert await _violation(errors, subjects.k8s_object("pod", "default", "evil"))
    assert await _violation(errors, "_INBOX.someone-elses-request")
    admin, _ = await connect_as("admin")
    await provision(admin.jetstream())
    watcher, werrors = await connect_as("watcher")
    await watcher.jetstream().publish(subjects.k8s_object("pod", "default", "ok"), b"x", timeout=5)
    assert not werrors


async def test_identity_service_runs_as_its_least_privileged_user(
    secured: tuple[NatsServer, dict[str, dict[str, str]]], connect_as: Connect, tmp_path: Path
) -> None:
    """The real service under its own user: it syncs, leads, writes, signs; others stay refused."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from nodemesh.bus import RemoteError
    from nodemesh.messages.identity import IPCacheEntry, SvidReply, SvidRequest
    from nodemesh.runtime import run_service
    from services.identity.app import main as identity_main
    from services.identity.config import IdentityConfig

    from .conftest import Cluster, eventually

    server, creds = secured
    admin, _ = await connect_as("admin")
    admin_bus = Bus(admin)
    await provision(admin.jetstream())
    cluster = Cluster(admin_bus)
    await cluster.namespace("default")
    await cluster.pod("default", "a", {"app": "a"}, "node-a", "10.244.1.2")
    await cluster.synced()
    cfg = IdentityConfig(
        nats_url=server.url,
        nats_user="identity",
        nats_password=creds["identity"]["password"],
        data_dir=str(tmp_path / "identity"),
        lease_renew=0.2,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service("identity", cfg, identity_main, install_signals=False, stop=stop))
    try:
        kv = await admin.jetstream().key_value("ipcache")

        async def entry() -> IPCacheEntry | None:
            e = await kv.get(ipcache_key("10.244.1.2"))
            return msgspec.msgpack.decode(e.value or b"", type=IPCacheEntry)

        hosted = (await eventually(entry, what="ipcache entry written by the identity user")).identity
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        authd_a, errors = await connect_as(AUTHD.user("node-a"))
        reply = await Bus(authd_a).request(
            subjects.svid_sign("node-a"), SvidRequest(identity=hosted, csr_pem=csr), SvidReply, timeout=10
        )
        leaf = x509.load_pem_x509_certificate(reply.cert_chain_pem.encode())
        assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
        # node-b's authd is refused by NATS before the CA sees anything …
        authd_b, errors_b = await connect_as(AUTHD.user("node-b"))
        with pytest.raises(Exception, match="timed out"):
            await Bus(authd_b).request(
                subjects.svid_sign("node-a"),
                SvidRequest(identity=hosted, csr_pem=csr),
                SvidReply,
                timeout=0.5,
            )
        assert await _violation(errors_b, subjects.svid_sign("node-a"))
        # … and on its own subject the CA refuses an identity it does not host.
        with pytest.raises(RemoteError) as ei:
            await Bus(authd_b).request(
                subjects.svid_sign("node-b"), SvidRequest(identity=hosted, csr_pem=csr), SvidReply, timeout=10
            )
        assert ei.value.code == "403"
        assert not [e for e in errors if "permissions violation" in e]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
