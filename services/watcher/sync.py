"""The active watcher's work: list then watch every kind, publish each change once, then ``Synced``.

``known`` maps (kind, namespace, name) to the (uid, resourceVersion) the stream holds; it starts
from a replay of the stream, so after a restart or failover an unchanged object is not
re-published and an object deleted while no watcher ran gets a tombstone. A 410 Expired (or a
too-old resourceVersion after an API server restart) relists the kind, publishing deletes for
what vanished. Bookmarks advance the resourceVersion a re-watch starts from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.errors import MaxPayloadError

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.k8scache import K8sCache
from nodemesh.kinds import Kind
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.streams import STREAM_K8S
from services.watcher.kube import ApiStatusError, KubeClient
from services.watcher.metrics import WatcherMetrics

__all__ = ["ActiveWatcher", "KindSync", "LostLeadership", "object_event"]

log = logging.getLogger("nodemesh.watcher.sync")

Key = tuple[str, str, str]  # kind, namespace, name
Known = dict[Key, tuple[str, str]]  # → (uid, resourceVersion)


class LostLeadership(Exception):
    """The lease is no longer ours: stop publishing at once."""


def object_event(kind: Kind, typ: str, obj: dict[str, Any], watcher: str) -> ObjectEvent:
    meta = obj.get("metadata") or {}
    return ObjectEvent(
        type="delete" if typ == "delete" else "upsert",
        kind=kind.kind,
        api_version=kind.api_version,
        namespace=str(meta.get("namespace", "")) if kind.namespaced else "",
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        obj=obj,
        watcher=watcher,
    )


class Publisher:
    """Publishes ObjectEvents while we hold the lease, keeping ``known`` current."""

    def __init__(
        self, bus: Bus, watcher: str, known: Known, metrics: WatcherMetrics, is_leader: Callable[[], bool]
    ) -> None:
        self.bus = bus
        self.watcher = watcher
        self.known = known
        self.metrics = metrics
        self.is_leader = is_leader

    async def upsert(self, kind: Kind, obj: dict[str, Any]) -> None:
        ev = object_event(kind, "upsert", obj, self.watcher)
        key = (kind.kind, ev.namespace, ev.name)
        if self.known.get(key) == (ev.uid, ev.resource_version):
            self.metrics.skipped.labels(kind=kind.kind).inc()
            return
        await self._publish(ev)
        self.known[key] = (ev.uid, ev.resource_version)

    async def delete(self, kind: Kind, obj: dict[str, Any]) -> None:
        ev = object_event(kind, "delete", obj, self.watcher)
        key = (kind.kind, ev.namespace, ev.name)
        if key not in self.known:
            return  # the stream never held it (or already holds its tombstone)
        await self._publish(ev)
        self.known.pop(key, None)

    async def _publish(self, ev: ObjectEvent) -> None:
        if not self.is_leader():
            raise LostLeadership()
        try:
            await self.bus.js_publish(
                subjects.k8s_object(ev.kind, ev.namespace, ev.name),
                ev,
                msg_id=f"{ev.uid}:{ev.resource_version}:{ev.type}",
            )
        except MaxPayloadError:
            # Retrying cannot help: skip this version (the stream keeps the previous one) rather
            # than block the kind's list/watch forever. Raise NATS' max_payload to carry it.
            log.error(
                "%s %s/%s (resourceVersion %s) exceeds NATS max_payload: not published",
                ev.kind,
                ev.namespace,
                ev.name,
                ev.resource_version,
            )
            self.metrics.publish_errors.labels(kind=ev.kind, reason="too_large").inc()
            return
        self.metrics.published.labels(kind=ev.kind, type=ev.type).inc()


class KindSync:
    """List/watch of one kind."""

    def __init__(
        self,
        kube: KubeClient,
        kind: Kind,
        pub: Publisher,
        metrics: WatcherMetrics,
        *,
        watch_timeout_s: int = 300,
        missing_retry_s: float = 30.0,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.pub = pub
        self.metrics = metrics
        self.watch_timeout_s = watch_timeout_s
        self.missing_retry_s = missing_retry_s
        self.rv = ""  # where the next watch starts

    async def list_and_publish(self) -> str:
        """List, publish what differs from the stream, tombstone what vanished; the list's RV."""
        items, rv = await self.kube.list(self.kind)
        seen: set[Key] = set()
        for obj in items:
            if not _well_formed(obj):
                log.warning("skipping a malformed %s in the list", self.kind.kind)
                continue
            meta = obj["metadata"]
            seen.add(
                (
                    self.kind.kind,
                    str(meta.get("namespace", "")) if self.kind.namespaced else "",
                    str(meta.get("name", "")),
                )
            )
            await self.pub.upsert(self.kind, obj)
        for key in [k for k in self.pub.known if k[0] == self.kind.kind and k not in seen]:
            uid, last_rv = self.pub.known[key]
            tomb: dict[str, Any] = {"name": key[2], "uid": uid, "resourceVersion": last_rv}
            if self.kind.namespaced:
                tomb["namespace"] = key[1]
            gone = {"apiVersion": self.kind.api_version, "kind": self.kind.kind, "metadata": tomb}
            await self.pub.delete(self.kind, gone)
        return rv

    async def initial(self) -> str | None:
        """The first list; None when the kind's API does not exist (404)."""
        backoff = 0.2
        while True:
            try:
                return await self.list_and_publish()
            except ApiStatusError as e:
                if e.code == 404:
                    log.warning(
                        "kind %s is not served by the API (%s); retrying every %.0fs",
                        self.kind.kind,
                        e.message,
                        self.missing_retry_s,
                    )
                    return None
                log.warning("list of %s failed: %s", self.kind.kind, e)
            except (LostLeadership, asyncio.CancelledError):
                raise
            except Exception as e:  # API unreachable: keep trying
                log.warning("list of %s failed: %r", self.kind.kind, e)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def run(self, rv: str | None) -> None:
        """Watch forever from ``rv`` (after waiting for a missing kind to appear)."""
        while rv is None:
            await asyncio.sleep(self.missing_retry_s)
            self.metrics.relists.labels(kind=self.kind.kind, reason="missing").inc()
            rv = await self.initial()
        backoff = 0.2
        self.rv = rv
        while True:
            try:
                await self._watch_once()
                backoff = 0.2
                self.metrics.watch_restarts.labels(kind=self.kind.kind, reason="end").inc()
            except ApiStatusError as e:
                if e.code == 410:
                    log.info("watch of %s expired at %s: relisting", self.kind.kind, self.rv)
                    self.metrics.relists.labels(kind=self.kind.kind, reason="expired").inc()
                    self.rv = await self._relist(backoff)
                    continue
                log.warning("watch of %s failed: %s", self.kind.kind, e)
                self.metrics.watch_restarts.labels(kind=self.kind.kind, reason=str(e.code)).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except (LostLeadership, asyncio.CancelledError):
                raise
            except Exception as e:  # connection refused/reset: the API server restarts
                log.warning("watch of %s broke: %r", self.kind.kind, e)
                self.metrics.watch_restarts.labels(kind=self.kind.kind, reason="error").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _relist(self, backoff: float) -> str:
        while True:
            try:
                return await self.list_and_publish()
            except (LostLeadership, asyncio.CancelledError):
                raise
            except Exception as e:
                log.warning("relist of %s failed: %r", self.kind.kind, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch_once(self) -> None:
        """One watch request from ``self.rv``; ``self.rv`` advances with every handled event, so a
        broken stream resumes where it stopped."""
        async for ev in self.kube.watch(self.kind, self.rv, self.watch_timeout_s):
            typ, obj = ev.get("type"), ev.get("object")
            if typ == "ERROR":
                body = obj if isinstance(obj, dict) else {}
                raise ApiStatusError.from_body(int(body.get("code") or 500), body)
            if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
                log.warning("skipping a malformed %s watch event", self.kind.kind)
                continue
            new_rv = str(obj["metadata"].get("resourceVersion", "") or self.rv)
            if typ in ("ADDED", "MODIFIED", "DELETED") and not _well_formed(obj):
                log.warning("skipping a malformed %s watch event", self.kind.kind)
            elif typ in ("ADDED", "MODIFIED"):
                await self.pub.upsert(self.kind, obj)
            elif typ == "DELETED":
                await self.pub.delete(self.kind, obj)
            elif typ != "BOOKMARK":
                log.warning("unknown watch event type %r for %s", typ, self.kind.kind)
                continue
            self.rv = new_rv


def _well_formed(obj: Any) -> bool:
    """An object we can key: a mapping with metadata.name (and a string resourceVersion)."""
    if not isinstance(obj, dict):
        return False
    meta = obj.get("metadata")
    return isinstance(meta, dict) and isinstance(meta.get("name"), str) and bool(meta["name"])


class ActiveWatcher:
    """Everything the lease holder runs: catch up with the stream, list all, Synced, watch all."""

    def __init__(
        self,
        bus: Bus,
        kube: KubeClient,
        kinds: Iterable[Kind],
        watcher: str,
        metrics: WatcherMetrics,
        is_leader: Callable[[], bool],
        *,
        watch_timeout_s: int = 300,
        missing_retry_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.kube = kube
        self.kinds = list(kinds)
        self.watcher = watcher
        self.metrics = metrics
        self.is_leader = is_leader
        self.watch_timeout_s = watch_timeout_s
        self.missing_retry_s = missing_retry_s

    async def _replay(self, timeout: float = 60.0) -> tuple[Known, int]:
        """What the stream holds now, by a fresh replay (K8sCache) up to its last sequence.

        A fresh consumer at takeover, rather than one kept running since start-up, cannot be
        stale after a NATS restart, and it includes the previous leader's last messages.
        """
        info = await self.bus.js.stream_info(STREAM_K8S.name)
        target = int(info.state.last_seq)
        cache = K8sCache(self.bus)
        await cache.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while cache.applied_seq < target:
                if loop.time() > deadline:
                    raise TimeoutError(f"stream K8S replay reached {cache.applied_seq} of {target}")
                await asyncio.sleep(0.01)
            marker = await cache.latest_marker()
            known: Known = {}
            for kind, objs in cache.store.items():
                for (ns, name), obj in objs.items():
                    meta = obj.get("metadata") or {}
                    known[(kind, ns, name)] = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
            return known, (marker.epoch if marker else 0)
        finally:
            await cache.stop()

    async def run(self, on_synced: Callable[[], Awaitable[None] | None]) -> None:
        known, last_epoch = await self._replay()
        epoch = last_epoch + 1
        pub = Publisher(self.bus, self.watcher, known, self.metrics, self.is_leader)
        syncs = [
            KindSync(
                self.kube,
                k,
                pub,
                self.metrics,
                watch_timeout_s=self.watch_timeout_s,
                missing_retry_s=self.missing_retry_s,
            )
            for k in self.kinds
        ]
        rvs = await asyncio.gather(*(s.initial() for s in syncs))
        if not self.is_leader():
            raise LostLeadership()
        info = await self.bus.js.stream_info(STREAM_K8S.name)
        listed = [s.kind.kind for s, rv in zip(syncs, rvs, strict=True) if rv is not None]
        await self.bus.js_publish(
            subjects.K8S_SYNCED,
            Synced(watcher=self.watcher, epoch=epoch, stream_seq=int(info.state.last_seq), kinds=listed),
        )
        log.info("initial sync done: %d objects, epoch %d", len(known), epoch)
        res = on_synced()
        if res is not None:
            await res
        try:
            async with asyncio.TaskGroup() as tg:
                for s, rv in zip(syncs, rvs, strict=True):
                    tg.create_task(s.run(rv), name=f"watch-{s.kind.plural}")
        except BaseExceptionGroup as eg:
            # One kind noticing the lost lease is the answer for all of them.
            if eg.subgroup(LostLeadership) is not None:
                raise LostLeadership() from eg
            raise
