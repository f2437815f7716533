"""The identity service end to end: K8S stream in, identities / ipcache / nodes in KV and events out."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.identity import (
    AllocateReply,
    AllocateRequest,
    IPCacheEntry,
    IPCacheEvent,
    NodeInfo,
)
from nodemesh.streams import ipcache_key

from .conftest import Cluster, RunReplica, eventually, identity, ipcache_entry, kv_value


async def _ready(port: int) -> bool:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status == 200


async def test_pod_gets_identity_and_ipcache_entry(
    bus: Bus, cluster: Cluster, run_replica: RunReplica
) -> None:
    await cluster.namespace("shop", {"team": "a"})
    await cluster.node("node-1", "127.0.50.1", "10.244.1.0/24")
    labels = {"app": "web", "pod-template-hash": "abc123", "app.kubernetes.io/name": "web"}
    await cluster.pod("shop", "web-1", labels, "node-1", "10.244.1.5")
    await cluster.pod("shop", "web-2", {**labels, "pod-template-hash": "zzz999"}, "node-1", "10.244.1.6")
    await cluster.pod("shop", "pending", {"app": "web"}, "node-1", None)
    await cluster.synced()
    replica = await run_replica()
    await eventually(lambda: _ready(replica.svc.health_port), what="ready")

    e1 = await ipcache_entry(bus, "10.244.1.5")
    e2 = await ipcache_entry(bus, "10.244.1.6")
    assert e1 is not None and e2 is not None  # ready means converged
    assert e1.identity == e2.identity >= 256  # pod-template-hash is filtered: one identity
    assert (e1.node, e1.namespace, e1.pod) == ("node-1", "shop", "web-1")
    ident = await identity(bus, e1.identity)
    assert ident is not None
    assert ident.labels == sorted(
        [
            "k8s:app=web",
            "k8s:app.kubernetes.io/name=web",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=a",
            "k8s:io.cilium.k8s.policy.cluster=default",
            "k8s:io.cilium.k8s.policy.serviceaccount=default",
            "k8s:io.kubernetes.pod.namespace=shop",
        ]
    )
    assert ident.refs == ["node-1/shop/web-1", "node-1/shop/web-2"]
    node_entry = await ipcache_entry(bus, "127.0.50.1")
    assert node_entry == IPCacheEntry(ip="127.0.50.1", identity=6, node="node-1")
    info = await kv_value(bus, "nodes", "node-1", NodeInfo)
    assert info is not None and (info.address, info.pod_cidr) == ("127.0.50.1", "10.244.1.0/24")
    for n, name in (
        (0, "unknown"),
        (1, "host"),
        (2, "world"),
        (6, "remote-node"),
        (8, "ingress"),
        (11, "encrypted-overlay"),
    ):
        reserved = await identity(bus, n)
        assert reserved is not None and reserved.reserved and f"reserved:{name}" in reserved.labels
    apiserver = await identity(bus, 7)
    assert apiserver is not None and apiserver.labels == ["reserved:kube-apiserver", "reserved:remote-node"]

    # Deleting a pod removes its entry and drops its reference (the identity stays: web-2 uses it).
    await cluster.delete("Pod", "shop", "web-1")
    await eventually(lambda: _none(ipcache_entry(bus, "10.244.1.5")), what="entry removed")
    ident = await eventually(lambda: _refs_are(bus, e1.identity, ["node-1/shop/web-2"]), what="ref dropped")
    assert ident


async def _none(aw: object) -> bool:
    return await aw is None  # type: ignore[misc]


async def _refs_are(bus: Bus, n: int, refs: list[str]) -> bool:
    ident = await identity(bus, n)
    return ident is not None and ident.refs == refs


async def test_namespace_label_change_relabels_its_pods(
    bus: Bus, cluster: Cluster, run_replica: RunReplica
) -> None:
    await cluster.namespace("a", {"env": "dev"})
    await cluster.namespace("b", {"env": "dev"})
    await cluster.pod("a", "p1", {"app": "x"}, "node-1", "10.244.1.10")
    await cluster.pod("a", "p2", {"app": "x"}, "node-1", "10.244.1.11")
    await cluster.pod("b", "q1", {"app": "x"}, "node-1", "10.244.1.12")
    await cluster.synced()
    replica = await run_replica(batch_preallocate=True)  # the optional batch path, end to end
    await eventually(lambda: _ready(replica.svc.health_port), what="ready")
    before = {ip: (await ipcache_entry(bus, ip)) for ip in ("10.244.1.10", "10.244.1.11", "10.244.1.12")}
    old_a = before["10.244.1.10"].identity  # type: ignore[union-attr]
    old_b = before["10.244.1.12"].identity  # type: ignore[union-attr]
    assert before["10.244.1.11"].identity == old_a != old_b  # type: ignore[union-attr]

    await cluster.namespace("a", {"env": "prod"})

    async def relabeled() -> bool:
        e1, e2 = await ipcache_entry(bus, "10.244.1.10"), await ipcache_entry(bus, "10.244.1.11")
        return bool(e1 and e2 and e1.identity == e2.identity != old_a)

    await eventually(relabeled, what="pods of namespace a relabeled")
    e1 = await ipcache_entry(bus, "10.244.1.10")
    assert e1 is not None
    new = await identity(bus, e1.identity)
    assert new is not None and "k8s:io.cilium.k8s.namespace.labels.env=prod" in new.labels
    assert (await ipcache_entry(bus, "10.244.1.12")).identity == old_b  # type: ignore[union-attr]
    old = await eventually(lambda: _refs_are(bus, old_a, []), what="old identity unreferenced")
    assert old


async def test_ipcache_events_in_order_and_late_consumer_gets_full_table(
    bus: Bus, cluster: Cluster, run_replica: RunReplica
) -> None:
    await cluster.namespace("default")
    await cluster.synced()
    replica = await run_replica()
    await eventually(lambda: _ready(replica.svc.health_port), what="ready")
    events: list[IPCacheEvent] = []

    async def on_event(msg: object) -> None:
        events.append(msgspec.msgpack.decode(msg.data, type=IPCacheEvent))  # type: ignore[attr-defined]

    sub = await bus.js.subscribe(
        subjects.IPCACHE_EVENTS, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=on_event
    )
    # One IP, reused: a → deleted → b → relabel.  Events for it must come in that order.
    await cluster.pod("default", "a", {"app": "a"}, "node-1", "10.244.1.20")
    await eventually(lambda: ipcache_entry(bus, "10.244.1.20"), what="a")
    await cluster.delete("Pod", "default", "a")
    await eventually(lambda: _none(ipcache_entry(bus, "10.244.1.20")), what="a gone")
    await cluster.pod("default", "b", {"app": "b"}, "node-1", "10.244.1.20")
    for i in range(20):
        await cluster.pod("default", f"many-{i}", {"app": "many"}, "node-2", f"10.244.2.{i + 1}")

    async def all_seen() -> bool:
        return len([e for e in events if e.entry.ip.startswith("10.244.2.")]) >= 20 and any(
            e.entry.pod == "b" for e in events
        )

    await eventually(all_seen, what="events")
    ip20 = [(e.type, e.entry.pod) for e in events if e.entry.ip == "10.244.1.20"]
    assert ip20 == [("upsert", "a"), ("delete", "a"), ("upsert", "b")]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)
    await sub.unsubscribe()

    # A consumer that starts now gets the whole table from KV.
    kv = await bus.kv("ipcache")
    keys = await kv.keys()
    entries = [msgspec.msgpack.decode((await kv.get(k)).value or b"", type=IPCacheEntry) for k in keys]
    pods = sorted(e.pod for e in entries if e.pod)
    assert pods == sorted(["b", *(f"many-{i}" for i in range(20))])


async def test_two_replicas_one_writer_and_failover(
    bus: Bus, cluster: Cluster, run_replica: RunReplica
) -> None:
    await cluster.namespace("default")
    await cluster.pod("default", "p", {"app": "p"}, "node-1", "10.244.1.30")
    await cluster.synced()
    r1 = await run_replica()
    r2 = await run_replica()
    for r in (r1, r2):
        await eventually(lambda r=r: _ready(r.svc.health_port), what="ready")  # type: ignore[misc]
    first = await ipcache_entry(bus, "10.244.1.30")
    assert first is not None
    ext = await bus.request(
        subjects.IDENTITY_ALLOCATE, AllocateRequest(labels=["k8s:app=vm"], endpoint="ext:vm-1"), AllocateReply
    )
    # Stop whichever leads; the other takes over and keeps serving changes with the same numbers.
    leader, other = await _leader_first(r1, r2)
    assert await leader.stop() == 0
    await cluster.pod("default", "p2", {"app": "p"}, "node-1", "10.244.1.31")
    second = await eventually(lambda: ipcache_entry(bus, "10.244.1.31"), what="failover write", timeout=30)
    assert second.identity == first.identity
    assert not other.task.done()
    # The new leader's full resync kept the external reference (it only manages pod references).
    kept = await identity(bus, ext.identity.id)
    assert kept is not None and kept.refs == ["ext:vm-1"]


async def _leader_first(*replicas: object) -> list[object]:
    async def find() -> list[object]:
        ordered = sorted(replicas, key=lambda r: 0 if _gauge(r, "nodemesh_identity_leader") == 1.0 else 1)
        return ordered if _gauge(ordered[0], "nodemesh_identity_leader") == 1.0 else []

    return await eventually(find, what="a leader")


def _gauge(replica: object, name: str) -> float | None:
    reg = replica.svc.registry  # type: ignore[attr-defined]
    return reg.get_sample_value(name)  # type: ignore[no-any-return]


async def _sleep() -> None:
    await asyncio.sleep(0)


async def test_corrupt_ipcache_entries_are_replaced_or_removed(
    bus: Bus, cluster: Cluster, run_replica: RunReplica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    kv = await bus.kv("ipcache")
    await kv.put(ipcache_key("10.244.1.40"), b"\xc1 garbage")  # a live pod's IP
    await kv.put(ipcache_key("10.244.9.9"), b"\xc1 garbage")  # nobody's
    await cluster.namespace("default")
    await cluster.pod("default", "p", {"app": "p"}, "node-1", "10.244.1.40")
    await cluster.synced()
    await run_replica()
    fixed = await eventually(lambda: ipcache_entry(bus, "10.244.1.40"), what="entry rewritten")
    assert fixed.pod == "p" and fixed.identity >= 256
    await eventually(lambda: _gone_key(kv, ipcache_key("10.244.9.9")), what="orphan garbage deleted")
    assert "skipping corrupt KV entry" in caplog.text


async def _gone_key(kv: object, key: str) -> bool:
    try:
        await kv.get(key)  # type: ignore[attr-defined]
    except Exception:
        return True
    return False


async def test_a_deleted_node_takes_its_nodeinfo_ipcache_and_auth_entries(
    bus: Bus, cluster: Cluster, run_replica: RunReplica
) -> None:
    """`nodemesh up --nodes 1` after 2 nodes: node-2's Node is deleted; what named it must go."""
    await cluster.node("node-1", "127.0.50.1", "10.244.1.0/24")
    await cluster.node("node-2", "127.0.50.2", "10.244.2.0/24")
    await cluster.synced()
    auth = await bus.kv("auth")
    # What each node's authd left in KV auth (keys <node>.<local>.<remote>.<remote node>.<type>).
    await auth.put("node-2.300.301.node-1.1", b"{}")
    await auth.put("node-1.301.300.node-2.1", b"{}")
    replica = await run_replica()
    await eventually(lambda: _ready(replica.svc.health_port), what="ready")
    assert await kv_value(bus, "nodes", "node-2", NodeInfo) is not None
    assert await ipcache_entry(bus, "127.0.50.2") is not None

    await cluster.delete("Node", "", "node-2")

    async def gone() -> bool:
        return (
            await kv_value(bus, "nodes", "node-2", NodeInfo) is None
            and await ipcache_entry(bus, "127.0.50.2") is None
            and "node-2.300.301.node-1.1" not in await auth.keys()
        )

    await eventually(gone, what="node-2's entries removed")
    # node-1's own entry is node-1's authd's to revoke (it does, seeing node-2 gone): not ours.
    assert await auth.keys() == ["node-1.301.300.node-2.1"]
    assert await kv_value(bus, "nodes", "node-1", NodeInfo) is not None
