"""Wiring of the identity service (no logic here: see allocator, controller, signer).

Every replica mirrors the identities/ipcache/nodes/trust buckets, replays Pods/Namespaces/Nodes
from the K8S stream, and serves ``svid.sign.*``, ``identity.allocate``, ``identity.release`` and
``identity.ca.rotate`` in the queue group ``identity``. One replica — the holder of the ``identity``
lease — turns Kubernetes changes into KV writes and runs the GC; a new leader starts with a full
resync. All state is in KV, so replicas cannot disagree: they only race, and CAS settles races.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from nats.micro.request import Request
from prometheus_client import Gauge

from nodemesh import subjects
from nodemesh.k8scache import K8sCache
from nodemesh.kvmirror import KvMirror
from nodemesh.labels import EXTERNAL_PREFIX, LabelError, is_reserved
from nodemesh.lease import Lease
from nodemesh.messages.identity import (
    AllocateReply,
    AllocateRequest,
    CaRotateRequest,
    Identity,
    IdentityEvent,
    IPCacheEntry,
    NodeInfo,
    ReleaseRequest,
    SvidRequest,
    TrustBundle,
)
from nodemesh.runtime import RequestError, Service
from nodemesh.streams import (
    BUCKET_AUTH,
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_LEASES,
    BUCKET_NODES,
    BUCKET_TRUST,
    IDENTITY_KEY_PREFIX,
    LEASE_IDENTITY,
    TRUST_BUNDLE_KEY,
)
from services.identity.cell import CELL

from .allocator import AllocationError, Allocator, identity_type_for
from .config import IdentityConfig
from .controller import Controller
from .signer import Signer

__all__ = ["main"]

QUEUE = "identity"


async def main(svc: Service) -> None:
    cfg = svc.cfg
    assert isinstance(cfg, IdentityConfig)
    bus = svc.bus
    gate = svc.gate("synced")

    mirrors: dict[str, KvMirror[Any]] = {
        "identities": KvMirror(bus, BUCKET_IDENTITIES.name, identity_type_for),
        "ipcache": KvMirror(bus, BUCKET_IPCACHE.name, IPCacheEntry),
        "nodes": KvMirror(bus, BUCKET_NODES.name, NodeInfo),
        "trust": KvMirror(bus, BUCKET_TRUST.name, lambda k: TrustBundle if k == TRUST_BUNDLE_KEY else None),
    }
    alloc = Allocator(mirrors["identities"], cluster_id=cfg.cluster_id)
    holder = f"{socket.gethostname()}:{os.getpid()}:{id(svc):x}"
    leader_event = asyncio.Event()
    lease = Lease(await bus.kv(BUCKET_LEASES.name), LEASE_IDENTITY, holder, renew_every=cfg.lease_renew)
    cache = K8sCache(bus, kinds=CELL.kinds)
    ctl = Controller(
        bus,
        cache,
        alloc,
        mirrors["ipcache"],
        mirrors["nodes"],
        cluster=cfg.cluster_name,
        is_leader=lambda: lease.is_leader,
        registry=svc.registry,
        auth=await bus.kv(BUCKET_AUTH.name),
    )
    cache.on_change = ctl.on_change
    signer = Signer(
        cfg, bus, alloc, mirrors["trust"], is_leader=lambda: lease.is_leader, registry=svc.registry
    )

    async def identity_event(kind: str, ident: Identity) -> None:
        await bus.js_publish(subjects.IDENTITY_EVENTS, IdentityEvent(type=kind, identity=ident))  # type: ignore[arg-type]

    async def created(ident: Identity) -> None:
        await identity_event("upsert", ident)

    async def deleted(ident: Identity) -> None:
        await identity_event("delete", ident)

    alloc.on_created = created
    alloc.on_deleted = deleted

    resynced = asyncio.Event()

    async def become_leader() -> None:
        await cache.wait_synced()  # a resync against a partial cache would delete live entries
        await alloc.ensure_reserved()
        if lease.is_leader:
            # Optionally new label sets in bulk first (atomic batches), so the per-pod resync only
            # takes references; a failure here just leaves the work to the per-pod path.
            try:
                if cfg.batch_preallocate:
                    await alloc.allocate_batch(ctl.desired_label_sets())
            except Exception as e:
                svc.log.warning("batch pre-allocation failed (%s); allocating per pod", e)
            ctl.resync_all()
            resynced.set()

    async def on_leader(is_leader: bool) -> None:
        if is_leader:
            leader_event.set()
            svc.spawn(become_leader(), "become-leader")
        else:
            leader_event.clear()
            resynced.clear()
            ctl.drop_queue()

    lease.on_change = on_leader

    for m in mirrors.values():
        await m.start()
        svc.on_stop(m.stop)
    for m in mirrors.values():
        await m.synced.wait()
    await alloc.enable_batching()
    await asyncio.to_thread(signer.load)
    await signer.publish_bundle()

    gauge_ids = Gauge(
        "nodemesh_identity_identities", "Identities in KV (allocated + reserved)", registry=svc.registry
    )
    gauge_ids.set_function(
        lambda: float(sum(1 for k in mirrors["identities"].items if k.startswith(IDENTITY_KEY_PREFIX)))
    )
    gauge_ip = Gauge("nodemesh_identity_ipcache_entries", "ipcache entries in KV", registry=svc.registry)
    gauge_ip.set_function(lambda: float(len(mirrors["ipcache"].items)))
    gauge_leader = Gauge("nodemesh_identity_leader", "1 on the replica that writes", registry=svc.registry)
    gauge_leader.set_function(lambda: 1.0 if lease.is_leader else 0.0)

    # --- request endpoints (queue group: any replica answers) ----------------------------------------
    async def allocate(req: AllocateRequest, _r: Request) -> AllocateReply:
        # Pod references are the controller's (it drops any it cannot match to a pod); requests
        # take references for endpoints outside Kubernetes, named ext:<anything>.
        if req.endpoint and not req.endpoint.startswith(EXTERNAL_PREFIX):
            raise RequestError(400, f"endpoint must be empty or start with {EXTERNAL_PREFIX!r}")
        try:
            ident, created_now = await alloc.allocate(list(req.labels), req.endpoint)
        except LabelError as e:
            raise RequestError(400, f"invalid labels: {e}") from e
        except AllocationError as e:
            raise RequestError(503, str(e)) from e
        return AllocateReply(identity=ident, created=created_now)

    async def release(req: ReleaseRequest, _r: Request) -> AllocateReply:
        if not req.endpoint.startswith(EXTERNAL_PREFIX):
            raise RequestError(400, f"only {EXTERNAL_PREFIX!r} references can be released by request")
        if is_reserved(req.identity):
            raise RequestError(400, f"identity {req.identity} is reserved")
        await alloc.remove_ref(req.identity, req.endpoint)
        ident = alloc.identity(req.identity)
        if ident is None:
            raise RequestError(404, f"identity {req.identity} does not exist")
        return AllocateReply(identity=ident)

    await svc.endpoint("sign", subjects.SVID_SIGN_ALL, SvidRequest, signer.sign, queue_group=QUEUE)
    await svc.endpoint("allocate", subjects.IDENTITY_ALLOCATE, AllocateRequest, allocate, queue_group=QUEUE)
    await svc.endpoint("release", subjects.IDENTITY_RELEASE, ReleaseRequest, release, queue_group=QUEUE)
    await svc.endpoint(
        "rotate", subjects.IDENTITY_CA_ROTATE, CaRotateRequest, signer.rotate, queue_group=QUEUE
    )

    # --- background --------------------------------------------------------------------------------
    async def gc_loop() -> None:
        while True:
            await asyncio.sleep(cfg.gc_interval)
            if lease.is_leader:
                try:
                    await alloc.gc(cfg.gc_grace)
                except Exception:
                    svc.log.exception("identity GC failed; next run in %.0fs", cfg.gc_interval)

    async def readiness() -> None:
        await cache.wait_synced()
        # Ready once this replica leads and has converged, or another replica holds the lease.
        while not gate.open:
            if lease.is_leader and resynced.is_set():
                await ctl.idle.wait()
                gate.set()
            elif lease.holder_seen and lease.holder_seen != holder:
                gate.set()
            else:
                await asyncio.sleep(0.05)

    await cache.start()
    svc.on_stop(cache.stop)
    svc.on_stop(lease.release)
    for i in range(max(1, cfg.workers)):
        svc.spawn(ctl.worker(leader_event), f"worker-{i}")
    svc.spawn(lease.run(), "lease")
    svc.spawn(gc_loop(), "gc")
    svc.spawn(signer.loop(), "ca")
    svc.spawn(readiness(), "readiness")
