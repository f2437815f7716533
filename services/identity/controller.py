"""Pods, Namespaces and Nodes → identities (with references), ipcache entries and NodeInfo.

A Node that is gone also takes its entries in KV ``auth`` with it: they were its authd's, which went
with the node and can no longer remove them (peers revoke their own side, services/authd/table.py).

Level-triggered, like a Kubernetes controller: a change only marks an object dirty; a worker then
compares what the K8S cache says (desired) with what the KV mirrors hold (actual) and writes the
difference with CAS. The same code path serves a single pod event, a namespace relabel and the full
resync a replica runs when it becomes the leader, so a crash at any point is repaired by the next
resync. Only the leader's workers run (see lease.py): one writer, no duplicate events.

ipcache order: the write of an IP's KV entry and the publication of its ``IPCacheEvent`` happen
under a per-IP lock, so for every IP the event stream carries revisions in increasing order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.k8scache import K8sCache
from nodemesh.kvmirror import Conflict, KvMirror
from nodemesh.labels import LabelError, parse_endpoint, pod_labels
from nodemesh.messages.identity import Identity, IPCacheEntry, IPCacheEvent, NodeInfo
from nodemesh.messages.k8s import ObjectEvent
from nodemesh.streams import auth_node_prefix, ipcache_key

from .allocator import Allocator
from .endpoints import Owner, entry, node_entries, node_info, owner_of, pod_endpoint

__all__ = ["Controller"]

log = logging.getLogger("nodemesh.identity.controller")
Key = tuple[str, str, str]  # (kind, namespace, name)


class Controller:
    def __init__(
        self,
        bus: Bus,
        cache: K8sCache,
        alloc: Allocator,
        ipcache: KvMirror[IPCacheEntry],
        nodes: KvMirror[NodeInfo],
        *,
        cluster: str,
        is_leader: Callable[[], bool],
        registry: CollectorRegistry | None = None,
        auth: KeyValue | None = None,
    ) -> None:
        self.bus = bus
        self.cache = cache
        self.alloc = alloc
        self.ipc = ipcache
        self.nodes = nodes
        self.cluster = cluster
        self.is_leader = is_leader
        self.auth = auth
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty_again: set[Key] = set()
        self._ip_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.idle = asyncio.Event()
        self.idle.set()
        # owner → ipcache keys, maintained from the mirror (O(1) lookups per reconcile)
        self._by_owner: defaultdict[Owner, set[str]] = defaultdict(set)
        self._owner_of_key: dict[str, Owner] = {}
        ipcache.on_update = self._index_ipcache
        for key, (value, _) in ipcache.items.items():
            self._index_ipcache(key, value, None)
        self._errors = Counter(
            "nodemesh_identity_reconcile_errors", "Failed reconciles (retried)", registry=registry
        )
        self._invalid = Counter(
            "nodemesh_identity_invalid_pods", "Pods refused an identity (invalid labels)", registry=registry
        )
        self._events = Counter(
            "nodemesh_identity_ipcache_events", "ipcache events published", ["type"], registry=registry
        )

    # --- change intake ---------------------------------------------------------------------------
    def on_change(self, ev: ObjectEvent, prev: dict[str, Any] | None) -> None:
        if ev.kind == "Pod":
            self.enqueue(("Pod", ev.namespace, ev.name))
        elif ev.kind == "Node":
            self.enqueue(("Node", "", ev.name))
        elif ev.kind == "Namespace":
            old = ((prev or {}).get("metadata") or {}).get("labels")
            new = (ev.obj.get("metadata") or {}).get("labels") if ev.type == "upsert" else None
            if prev is None or old != new:
                for pod in self.cache.list("Pod", ev.name):
                    self.enqueue(("Pod", ev.name, str((pod.get("metadata") or {}).get("name") or "")))

    def enqueue(self, key: Key) -> None:
        if key in self._active:
            self._dirty_again.add(key)
            return
        if key not in self._pending:
            self._pending.add(key)
            self.idle.clear()
            self._queue.put_nowait(key)

    def resync_all(self) -> None:
        """Everything desired, plus everything actual that may be stale (the leader's first job)."""
        for pod in self.cache.list("Pod"):
            meta = pod.get("metadata") or {}
            self.enqueue(("Pod", str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        for node in self.cache.list("Node"):
            self.enqueue(("Node", "", str((node.get("metadata") or {}).get("name") or "")))
        for kind, ns, name in list(self._by_owner):
            self.enqueue(("Pod" if kind == "pod" else "Node", ns, name))
        for _, ref in self.alloc.all_refs():
            _, ns, name = parse_endpoint(ref)
            self.enqueue(("Pod", ns, name))
        for name in list(self.nodes.items):
            self.enqueue(("Node", "", name))
        for key in list(self.ipc.bad):
            self.enqueue(("Corrupt", "", key))  # undecodable ipcache entries: nobody owns them

    def desired_label_sets(self) -> list[list[str]]:
        """The identity labels of every pod that should have an identity now (for batch allocation)."""
        out: dict[str, list[str]] = {}
        for pod in self.cache.list("Pod"):
            ep = pod_endpoint(pod)
            namespace = self.cache.get("Namespace", "", ep.namespace) if ep is not None else None
            if ep is None or namespace is None:
                continue
            try:
                labels = pod_labels(pod, namespace, self.cluster)
            except LabelError:
                continue  # reconcile_pod reports it
            out["\n".join(labels)] = labels
        return list(out.values())

    def drop_queue(self) -> None:
        while not self._queue.empty():
            self._pending.discard(self._queue.get_nowait())
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._pending and not self._active:
            self.idle.set()

    # --- workers ---------------------------------------------------------------------------------
    async def worker(self, leader: asyncio.Event) -> None:
        while True:
            key = await self._queue.get()
            await self.cache.synced.wait()  # desired state is only known after the replay
            self._pending.discard(key)
            if not self.is_leader():
                self._check_idle()
                await leader.wait()  # the new leader resyncs everything; this key is covered
                continue
            self._active.add(key)
            try:
                await self.reconcile(key)
            except Exception:
                self._errors.inc()
                log.exception("reconciling %s/%s/%s failed; retrying", *key)
                await asyncio.sleep(0.5)
                self._dirty_again.add(key)
            finally:
                self._active.discard(key)
                if key in self._dirty_again:
                    self._dirty_again.discard(key)
                    self.enqueue(key)
                self._check_idle()

    async def reconcile(self, key: Key) -> None:
        kind, ns, name = key
        if kind == "Pod":
            await self.reconcile_pod(ns, name)
        elif kind == "Node":
            await self.reconcile_node(name)
        elif kind == "Corrupt" and name in self.ipc.bad:
            async with self._ip_locks[name]:
                rev = self.ipc.revisions.get(name, 0)
                log.warning("deleting corrupt ipcache entry %s (revision %d)", name, rev)
                try:
                    await self.ipc.delete(name, last=rev)
                except Conflict:
                    pass  # rewritten meanwhile: the new value is someone's

    async def reconcile_pod(self, ns: str, name: str) -> None:
        pod = self.cache.get("Pod", ns, name)
        ep = pod_endpoint(pod) if pod is not None else None
        ident: Identity | None = None
        if ep is not None:
            namespace = self.cache.get("Namespace", "", ns)
            if namespace is None:
                log.debug("pod %s/%s waits for its namespace", ns, name)
                return  # the namespace's arrival re-enqueues it; keep the current state meanwhile
            try:
                labels = pod_labels(pod or {}, namespace, self.cluster)
            except LabelError as e:
                self._invalid.inc()
                log.warning("pod %s/%s gets no identity: %s", ns, name, e)
                ep = None
            else:
                ident, _ = await self.alloc.allocate(labels, ep.ref)
        for n, ref in self.alloc.refs_of_pod(ns, name):
            if ident is None or ep is None or n != ident.id or ref != ep.ref:
                await self.alloc.remove_ref(n, ref)
        owner: Owner = ("pod", ns, name)
        want: dict[str, IPCacheEntry] = {}
        if ep is not None and ident is not None:
            for ip in ep.ips:
                want[ipcache_key(ip)] = entry(ip, ident.id, node=ep.node, namespace=ns, pod=name)
        await self._converge_ips(owner, want)

    async def reconcile_node(self, name: str) -> None:
        node = self.cache.get("Node", "", name)
        info = node_info(node) if node is not None else None
        held = self.nodes.get(name)
        if info is not None and (held is None or held[0] != info):
            await self._cas(self.nodes, name, info)
        elif info is None and held is not None:
            await self._cas_delete(self.nodes, name)
        want = {ipcache_key(e.ip): e for e in node_entries(node)} if node is not None else {}
        await self._converge_ips(("node", "", name), want)
        if node is None:
            await self._purge_auth(name)

    async def _purge_auth(self, node: str) -> None:
        if self.auth is None:
            return
        prefix = auth_node_prefix(node).removesuffix(">")
        try:  # (keys()' filters are substrings, not subject patterns: filter here)
            keys = [k for k in await self.auth.keys() if k.startswith(prefix)]
        except NoKeysError:
            return
        for key in keys:
            await self.auth.delete(key)
        if keys:
            log.info("node %s is gone: removed its %d auth entries", node, len(keys))

    # --- ipcache writes --------------------------------------------------------------------------
    async def _converge_ips(self, owner: Owner, want: dict[str, IPCacheEntry]) -> None:
        for key, value in want.items():
            await self.put_ip(key, value)
        for key in list(self._by_owner.get(owner, ())):
            if key not in want:
                await self.delete_ip(key, owner)

    async def put_ip(self, key: str, value: IPCacheEntry) -> None:
        async with self._ip_locks[key]:
            while True:
                held = self.ipc.get(key)
                if held is not None and held[0] == value:
                    return
                try:
                    rev = await self.ipc.update(key, value, last=held[1] if held else self._absent_rev(key))
                    break
                except Conflict:
                    continue
            await self._publish(IPCacheEvent(type="upsert", entry=value, revision=rev), key)

    async def delete_ip(self, key: str, owner: Owner) -> None:
        async with self._ip_locks[key]:
            while True:
                held = self.ipc.get(key)
                if held is None or owner_of(held[0]) != owner:
                    return  # gone, or another endpoint owns this IP now
                try:
                    rev = await self.ipc.delete(key, last=held[1])
                    break
                except Conflict:
                    continue
            await self._publish(IPCacheEvent(type="delete", entry=held[0], revision=rev), key)

    def _absent_rev(self, key: str) -> int:
        # A deleted key's create needs the delete marker's revision; the mirror knows it.
        return self.ipc.revisions.get(key, 0)

    async def _publish(self, ev: IPCacheEvent, key: str) -> None:
        await self.bus.js_publish(subjects.IPCACHE_EVENTS, ev, msg_id=f"ipcache:{key}:{ev.revision}")
        self._events.labels(type=ev.type).inc()

    async def _cas(self, mirror: KvMirror[Any], key: str, value: Any) -> None:
        while True:
            held = mirror.get(key)
            if held is not None and held[0] == value:
                return
            try:
                await mirror.update(key, value, last=held[1] if held else mirror.revisions.get(key, 0))
                return
            except Conflict:
                continue

    async def _cas_delete(self, mirror: KvMirror[Any], key: str) -> None:
        while (held := mirror.get(key)) is not None:
            try:
                await mirror.delete(key, last=held[1])
            except Conflict:
                continue

    # --- index -----------------------------------------------------------------------------------
    def _index_ipcache(self, key: str, value: IPCacheEntry | None, _old: IPCacheEntry | None) -> None:
        old = self._owner_of_key.pop(key, None)
        if old is not None:
            self._by_owner[old].discard(key)
            if not self._by_owner[old]:
                del self._by_owner[old]
        if value is not None:
            owner = owner_of(value)
            self._owner_of_key[key] = owner
            self._by_owner[owner].add(key)
