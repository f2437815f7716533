"""authd's wiring: KV mirrors and the policy cache feed the manager; the listener, the reactive
subscription, the list endpoint and the Workload API serve. Logic lives in the modules it wires."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.micro.request import Request

from nodemesh import subjects
from nodemesh.codec import decode
from nodemesh.errors import DecodeError
from nodemesh.k8scache import K8sCache
from nodemesh.kvmirror import KvMirror
from nodemesh.messages.auth import AuthEntry, AuthListReply, AuthListRequest, AuthRequired
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo, TrustBundle
from nodemesh.runtime import Service
from nodemesh.streams import (
    BUCKET_AUTH,
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_NODES,
    BUCKET_TRUST,
    IDENTITY_KEY_PREFIX,
    TRUST_BUNDLE_KEY,
)
from services.authd.cell import CELL
from services.authd.config import AuthdConfig
from services.authd.manager import AuthManager
from services.authd.metrics import Metrics
from services.authd.server import AuthServer
from services.authd.svids import SvidStore

__all__ = ["POLICY_KINDS", "main"]

POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


async def main(svc: Service) -> None:
    cfg = svc.cfg
    assert isinstance(cfg, AuthdConfig)
    bus = svc.bus
    metrics = Metrics(svc.registry)
    store = SvidStore(bus, cfg.node, cfg.trust_domain, svc.registry, renew_fraction=cfg.renew_fraction)
    manager = AuthManager(bus, cfg, store, metrics)
    server = AuthServer(manager, store, workers=max(4, 2 * cfg.workers), timeout=cfg.handshake_timeout)
    store.listeners.append(manager.on_svid)
    svc.authd = manager  # type: ignore[attr-defined]  # for in-process tests and benches
    svc.authd_server = server  # type: ignore[attr-defined]

    changed = asyncio.Event()

    def touch(*_: Any) -> None:
        changed.set()

    identities = KvMirror(
        bus, BUCKET_IDENTITIES.name, Identity, keys=IDENTITY_KEY_PREFIX + ">", on_update=touch
    )
    ipcache = KvMirror(bus, BUCKET_IPCACHE.name, IPCacheEntry, on_update=touch)
    nodes = KvMirror(bus, BUCKET_NODES.name, NodeInfo, on_update=touch)

    def on_trust(key: str, value: TrustBundle | None, _old: TrustBundle | None) -> None:
        if key == TRUST_BUNDLE_KEY and value is not None:
            store.set_bundle(value)

    trust = KvMirror(bus, BUCKET_TRUST.name, TrustBundle, on_update=on_trust)
    policies = K8sCache(bus, kinds=CELL.kinds, on_change=lambda ev, prev: touch())
    for mirror in (identities, ipcache, nodes, trust):
        svc.spawn(mirror.run(), f"kv-{mirror.bucket}")
    await policies.start()
    svc.on_stop(policies.stop)

    async def recompute() -> None:
        # Policies too: a first pass without them would find no pair required and revoke every
        # entry just restored from KV (a restart must not cost authenticated pairs).
        await asyncio.gather(
            identities.synced.wait(), ipcache.synced.wait(), nodes.synced.wait(), policies.synced.wait()
        )
        restored = manager.restore(await _stored_entries(svc, cfg.node))
        if restored:
            svc.log.info("restored %d auth entries from KV auth", restored)
        first = True
        while True:
            await asyncio.sleep(0.002)  # coalesce a burst of changes into one recompute
            changed.clear()
            manager.update(
                {i.id: i for i in identities.values().values()},
                ipcache.values().values(),
                nodes.values(),
                [o for kind in POLICY_KINDS for o in policies.list(kind)],
            )
            if first:
                first = False
                initial.set()
            await changed.wait()

    initial = asyncio.Event()  # restored and computed once: `auth list` is complete from here on
    registered = asyncio.Event()  # subscriptions and the list endpoint are known to the server

    async def ready() -> None:
        await asyncio.gather(initial.wait(), policies.synced.wait())
        while server.sock is None:
            await asyncio.sleep(0.05)
        svc.gate("synced").set()

    async def listen() -> None:
        address = cfg.listen_address
        while not address:
            await nodes.synced.wait()
            info = nodes.value(cfg.node)
            if info is not None and info.address:
                address = info.address
                break
            svc.log.info("waiting for node %s's address in KV nodes", cfg.node)
            await asyncio.sleep(0.5)
        manager.source_address = address
        server.listen(address, cfg.auth_port)
        await server.serve()

    async def on_required(req: AuthRequired, _msg: object) -> None:
        manager.on_required(req)

    async def on_list(req: AuthListRequest, _r: Request) -> AuthListReply:
        entries = [e.view(cfg.node) for e in sorted(manager.entries.values(), key=lambda e: e.key)]
        if req.state:
            entries = [e for e in entries if e.state == req.state]
        return AuthListReply(
            node=cfg.node,
            entries=entries,
            hosted_identities=sorted(i for i, p in store.svids if p == "authd"),
            trust_domain=store.trust_domain,
            mode=cfg.mode,
            pending=len(manager.queued) + len(manager.inflight),
        )

    svc.gate("synced")
    svc.spawn(manager.publisher(), "publisher")
    svc.spawn(manager.scheduler(), "scheduler")
    svc.spawn(manager.reactive_loop(), "reactive")
    svc.spawn(store.run(), "svids")
    svc.spawn(recompute(), "recompute")
    svc.spawn(listen(), "listener")
    svc.spawn(ready(), "ready")
    await bus.subscribe(subjects.auth_required(cfg.node), AuthRequired, on_required)
    await svc.endpoint(
        "list", subjects.auth_list(cfg.node), AuthListRequest, on_list, queue_group=f"authd-{cfg.node}"
    )

    if cfg.workload_api:
        from services.authd.workload import WorkloadApi

        path = cfg.workload_socket or os.path.join(cfg.data_dir, "workload.sock")
        api = WorkloadApi(store, manager, path, netns_dir=cfg.netns_dir)
        await api.start()
        svc.on_stop(api.stop)

    await bus.nc.flush()
    registered.set()

    async def shutdown() -> None:
        manager.pool.shutdown(wait=False, cancel_futures=True)

    svc.on_stop(shutdown)


async def _stored_entries(svc: Service, node: str) -> list[AuthEntry]:
    """What a previous run of this node's authd left in KV ``auth`` (undecodable values skipped)."""
    kv = await svc.bus.kv(BUCKET_AUTH.name)
    out: list[AuthEntry] = []
    try:
        keys = await kv.keys()  # (filters= only logs a warning on this server version)
    except NoKeysError:
        return out
    for k in keys:
        if not k.startswith(f"{subjects.token(node)}."):
            continue
        try:
            entry = await kv.get(k)
            if entry.value:
                out.append(decode(entry.value, AuthEntry))
        except (DecodeError, KeyNotFoundError) as e:
            svc.log.warning("ignoring KV auth %s: %s", k, e)
    return out
