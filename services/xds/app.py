"""xds wiring: K8S stream → pure translation → consistent snapshots → ADS; ACKs → status patches.

Flow: a :class:`K8sCache` of every kind translation reads; any change marks the state dirty and,
after a short debounce, the whole state is translated again (``translate`` is pure and runs in a
worker thread so ADS streams stay responsive), turned into consistent snapshots and set in the
snapshot cache (identical content pushes nothing). Every ACK/NACK is published as ``XdsAck`` and
recorded; status patches (Gateway ``Programmed`` from the ACKs, the rest from translation) are
published on ``k8s.status.*`` only when they change what the object shows. The service is ready, and
serves any snapshot at all, only after the initial K8S sync and first translation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Counter, Histogram

from nodemesh import subjects
from nodemesh.errors import ConfigError
from nodemesh.k8scache import K8sCache
from nodemesh.messages.k8s import ObjectEvent
from nodemesh.messages.xds import XdsAck, XdsStatusReply, XdsStatusRequest
from nodemesh.policy.visibility import pod_visibility
from nodemesh.runtime import Service
from services.xds.acks import AckEvent
from services.xds.cache import SnapshotCache
from services.xds.cell import CELL
from services.xds.config import XdsConfig
from services.xds.isolate import ObjRef, translate_isolating
from services.xds.publish import AckRelay
from services.xds.reconcile import Snapshots, StatusBook, build_snapshots, gateway_patches, node_status
from services.xds.server import AdsServer, ServerTls
from services.xds.translate import TranslateInput, Translation, translate
from services.xds.translate.l7policy import has_http_rules

__all__ = ["XdsApp", "main", "start"]

#: Kinds whose status xds itself writes: a status-only change of these needs no re-translation.
_OWN_STATUS = frozenset(
    {"Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "Ingress"}
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _without_status(obj: dict[str, Any] | None) -> Any:
    if obj is None:
        return None
    meta = {
        k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")
    }
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def _pod_view(obj: dict[str, Any] | None) -> Any:
    """What of a Pod the L7 policy translation reads."""
    if not isinstance(obj, dict):
        return None

    def part(k: str) -> dict[str, Any]:
        v = obj.get(k)
        return v if isinstance(v, dict) else {}

    meta, spec, st = part("metadata"), part("spec"), part("status")
    visibility = pod_visibility(obj)[0]
    return (meta.get("labels"), spec.get("nodeName"), spec.get("containers"), st.get("podIP"), visibility)


def _translate(inp: TranslateInput) -> tuple[Translation, Snapshots]:
    tr = translate(inp)
    return tr, build_snapshots(tr)


def _server_tls(cfg: XdsConfig) -> ServerTls | None:
    if cfg.tls_dir:
        try:
            return ServerTls.from_dir(cfg.tls_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if cfg.insecure_ads:
        return None
    raise ConfigError("xds needs --tls-dir (mTLS for ADS); --insecure-ads only for in-process tests")


def _short(ref: ObjRef) -> str:
    kind, ns, name = ref
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


class XdsApp:
    """One xds replica's state; ``run()`` is its reconcile loop."""

    def __init__(self, svc: Service, cfg: XdsConfig) -> None:
        self.svc = svc
        self.cfg = cfg
        self.log = svc.log
        self.cache = SnapshotCache()
        self.relay = AckRelay(svc.bus, registry=svc.registry, on_change=self._acked)
        self.server = AdsServer(self.cache, self.relay.hooks(), _server_tls(cfg))
        self.k8s = K8sCache(svc.bus, CELL.kinds, on_change=self._k8s_changed)
        self.book = StatusBook()
        self.translation: Translation | None = None
        self.snaps: Snapshots | None = None
        self._dirty = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._wake = asyncio.Event()
        self._suspects: set[ObjRef] = set()  # changed since the last successful translation
        self._quarantine: set[ObjRef] = set()  # left out: translation fails with them (until they change)
        r = svc.registry
        self.m_translations = Counter("nodemesh_xds_translations", "Full re-translations", registry=r)
        self.m_translate_s = Histogram(
            "nodemesh_xds_translate_seconds", "Translate + snapshot time", registry=r
        )
        self.m_errors = Counter(
            "nodemesh_xds_translation_errors", "Translation/consistency errors", registry=r
        )
        self.m_patches = Counter(
            "nodemesh_xds_status_patches", "Status patches published", ["kind"], registry=r
        )

    # --- inputs ---------------------------------------------------------------------------------
    def _k8s_changed(self, ev: ObjectEvent, prev: dict[str, Any] | None) -> None:
        if ev.kind == "Pod" and not self._pod_matters(ev, prev):
            return
        if (
            ev.kind in _OWN_STATUS
            and ev.type == "upsert"
            and _without_status(ev.obj) == _without_status(prev)
        ):
            return  # our own status write coming back
        if ev.type == "delete":
            self.book.forget(ev.kind, ev.namespace, ev.name)
        ref = (ev.kind, ev.namespace, ev.name)
        self._suspects.add(ref)
        self._quarantine.discard(ref)
        self._dirty.set()
        self._wake.set()

    def _pod_matters(self, ev: ObjectEvent, prev: dict[str, Any] | None) -> bool:
        """Pods only feed the L7 policy listeners: re-translate only while some policy has HTTP
        rules or some pod asks for L7 visibility, and only for what those read (labels, node,
        address, ports, the visibility annotation), not every status change."""
        policies = [
            *self.k8s.store.get("CiliumNetworkPolicy", {}).values(),
            *self.k8s.store.get("CiliumClusterwideNetworkPolicy", {}).values(),
        ]
        if not any(has_http_rules(p) for p in policies) and not any(
            pod_visibility(p)[0] for p in (ev.obj, prev, *self.k8s.store.get("Pod", {}).values())
        ):
            return False
        return ev.type == "delete" or _pod_view(ev.obj) != _pod_view(prev)

    def _acked(self, _: AckEvent) -> None:
        self._status_dirty.set()
        self._wake.set()

    def published(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The status this replica last published for an object (None if none)."""
        return self.book.published(kind, namespace, name)

    async def status(self, req: XdsStatusRequest, _: object) -> XdsStatusReply:
        """``xds.status``: what each node's Envoy applied, has pending, or rejected (and why)."""
        names = [req.node] if req.node else sorted({*self.nodes(), *self.relay.tracker.nodes()})
        reply = XdsStatusReply(replica=self.relay.replica)
        for node in names:
            st = node_status(node, self.cache.get(node), self.relay.tracker, req.problems_only)
            st.streams = self.relay.node_streams.get(node, 0)
            reply.nodes.append(st)
        return reply

    def nodes(self) -> list[str]:
        """Nodes whose Envoys count for Programmed."""
        if self.cfg.nodes:
            return [n.strip() for n in self.cfg.nodes.split(",") if n.strip()]
        names = [name for (_, name) in self.k8s.store.get("Node", {})]
        return sorted(names) or self.relay.tracker.nodes()

    # --- loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.k8s.synced.wait()
        await self.retranslate()
        self.svc.gate("synced").set()
        self.log.info("initial sync done; serving snapshots")
        quiet = self.cfg.debounce_ms / 1000
        last = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Leading edge: a change after a quiet period is translated at once; changes that keep
            # coming (a burst, or during a translation) are coalesced by the debounce.
            if self._dirty.is_set():
                if time.monotonic() - last < quiet:
                    await asyncio.sleep(quiet)
                await self.retranslate()
                last = time.monotonic()
            elif self._status_dirty.is_set():
                await self.publish_statuses()

    async def retranslate(self) -> None:
        self._dirty.clear()
        # Objects are replaced, never mutated: a shallow copy per kind is a consistent snapshot.
        store = {k: dict(self.k8s.store.get(k, {})) for k in CELL.kinds}
        if self.translation is None:
            suspects = {(k, ns, n) for k, objs in store.items() for (ns, n) in objs}
        else:
            suspects = set(self._suspects)
        self._suspects.clear()
        nodes, now = tuple(self.nodes()), _now()
        als = self.cfg.access_log_cluster

        def run(objects: dict[str, list[dict[str, Any]]]) -> tuple[Translation, Snapshots]:
            inp = TranslateInput(objects=objects, nodes=nodes, now=now, access_log_cluster=als)
            return _translate(inp)

        started = time.perf_counter()
        try:
            (tr, snaps), bad, first_error = await asyncio.to_thread(
                translate_isolating, run, store, suspects, frozenset(self._quarantine), CELL.kinds
            )
        except Exception:
            # Even the unchanged objects fail: keep serving the last good snapshots.
            self._suspects |= suspects
            self.m_errors.inc()
            self.log.exception("translation failed; keeping the last good snapshots")
            return
        for ref in sorted(bad):
            self.m_errors.inc()
            self.log.error("left out %s: translation fails with it: %r", _short(ref), first_error)
        self._quarantine |= bad
        self.m_translate_s.observe(time.perf_counter() - started)
        self.m_translations.inc()
        for err in [*tr.errors, *snaps.errors]:
            self.m_errors.inc()
            self.log.warning("translation: %s", err)
        self.translation, self.snaps = tr, snaps
        self.cache.set_default(snaps.default)
        for node in self.cache.nodes():
            if node not in snaps.per_node:
                self.cache.clear(node)
        for node, snap in snaps.per_node.items():
            self.cache.set_snapshot(node, snap)
        await asyncio.sleep(0)  # let the streams push before status work
        await self.publish_statuses()

    async def publish_statuses(self) -> None:
        self._status_dirty.clear()
        if self.translation is None or self.snaps is None:
            return
        patches = gateway_patches(
            self.translation, self.snaps, self.relay.tracker, self.nodes(), self.cfg.programmed_nodes, _now()
        )
        for p in patches:
            current = self.k8s.get(p.kind, p.namespace, p.name)
            if current is None:
                continue  # deleted meanwhile
            p = self.book.settle(p, current)
            if not self.book.changed(p, current):
                continue
            try:
                await self.svc.bus.publish(subjects.k8s_status(p.kind, p.namespace, p.name), p)
            except Exception as e:
                self.log.warning("status patch for %s %s/%s failed: %s", p.kind, p.namespace, p.name, e)
                continue
            self.book.mark(p)
            self.m_patches.labels(kind=p.kind).inc()


async def start(svc: Service) -> XdsApp:
    """Wire and start one replica; returns it (tests inspect it)."""
    cfg = svc.cfg
    assert isinstance(cfg, XdsConfig)
    svc.gate("synced")
    app = XdsApp(svc, cfg)
    port = await app.server.start(cfg.grpc_addr)
    svc.log.info("ADS on %s (port %d)", cfg.grpc_addr, port)
    svc.on_stop(app.server.stop)

    async def on_remote_ack(msg: XdsAck, _: object) -> None:
        app.relay.remote(msg)

    # Other replicas' listener ACKs: Programmed must not depend on which replica an Envoy talks to.
    await svc.bus.subscribe(subjects.xds_ack("*"), XdsAck, on_remote_ack)
    await svc.endpoint("status", subjects.XDS_STATUS, XdsStatusRequest, app.status)
    await app.k8s.start()
    svc.on_stop(app.k8s.stop)
    svc.spawn(app.run(), "reconcile")
    return app


async def main(svc: Service) -> None:
    await start(svc)
