"""The auth manager: reactive signals, proactive pairs, renewals, removals, verdicts and events.

Inputs come from the event loop only (KV mirrors, K8S policies, ``auth.required.<node>``, SVID
changes, responder results); handshakes run in a thread pool. Every outgoing message goes through
one ordered publisher queue, so a removal can never overtake the grant it revokes.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.messages.auth import (
    AUTH_TYPE_ALWAYS_FAIL,
    AUTH_TYPE_SPIRE,
    AuthEntry,
    AuthEvent,
    AuthKey,
    AuthRequired,
    AuthVerdict,
)
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from nodemesh.streams import BUCKET_AUTH, auth_key
from services.authd.config import AuthdConfig
from services.authd.handshake import ResponderResult, initiate
from services.authd.metrics import Metrics
from services.authd.policy import Pair, PolicyPairs
from services.authd.spiffe import AuthFailure, LeafInfo, sni
from services.authd.svids import Purpose, Svid, SvidStore
from services.authd.table import (
    Entry,
    Topology,
    desired_keys,
    invalid_reason,
    is_primary,
    is_reserved,
    renew_at,
)

__all__ = ["AuthManager", "kv_key"]

log = logging.getLogger("nodemesh.authd.manager")
VALID_MARGIN = 1.0  # a verdict with less left than this is renewed rather than re-announced
KV_PUT, KV_DEL = "\x00kv-put", "\x00kv-del"  # markers in the publisher queue (never subjects)


def kv_key(node: str, key: AuthKey) -> str:
    """Key of an entry in KV ``auth``: ``<node>.<local>.<remote>.<remote node>.<type>`` (NATS
    permissions let only this node's authd write under ``<node>.``)."""
    return auth_key(node, key.local_identity, key.remote_identity, key.remote_node, key.auth_type)


TRANSIENT = frozenset({"not-hosted", "no-svid", "no-bundle"})  # reasons that clear up by themselves


class AuthManager:
    def __init__(self, bus: Bus, cfg: AuthdConfig, store: SvidStore, metrics: Metrics) -> None:
        self.bus = bus
        self.cfg = cfg
        self.me = cfg.node
        self.store = store
        self.m = metrics
        self.identities: dict[int, Identity] = {}
        self.topo = Topology(self.me, [], {})
        self.ip_index: dict[str, IPCacheEntry] = {}  # pod IP → entry (Workload API attestation)
        self.pairs: set[Pair] = set()
        self.desired: set[AuthKey] = set()
        self.skipped: set[AuthKey] = set()
        self.entries: dict[AuthKey, Entry] = {}
        self.inflight: set[AuthKey] = set()
        self.queued: set[AuthKey] = set()
        self.queue: asyncio.Queue[AuthKey] = asyncio.Queue(maxsize=cfg.queue_size)
        self.policy_errors: list[str] = []
        self._policy = PolicyPairs()
        self.source_address = ""
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="authd-init")
        self._sem = asyncio.Semaphore(cfg.workers)
        self._reactive_slots = asyncio.Semaphore(cfg.workers)
        self._dues: list[tuple[float, AuthKey]] = []  # (due time, key), lazily pruned
        self._expiries: list[tuple[float, AuthKey]] = []  # (expiry, key) of granted verdicts
        # Gauges are computed when scraped, so they are always current and cost nothing in between.
        metrics.pending.set_function(lambda: float(len(self.queued) + len(self.inflight)))
        for state in ("pending", "authenticated", "failed", "expired"):
            metrics.entries.labels(state=state).set_function(functools.partial(self._count, state))
        self._wake = asyncio.Event()
        self._out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- inputs ----------------------------------------------------------------------------------
    def update(
        self,
        identities: Mapping[int, Identity],
        ipcache: Iterable[IPCacheEntry],
        nodes: Mapping[str, NodeInfo],
        policies: Iterable[Mapping[str, Any]],
    ) -> None:
        """Recompute what this node needs after any change of identities, ipcache, nodes or policy."""
        self.identities = dict(identities)
        ipcache = list(ipcache)
        self.ip_index = {e.ip: e for e in ipcache if e.prefix_len in (32, 128)}
        topo = Topology(self.me, ipcache, nodes)
        self.topo = topo
        hosted = {i for i in topo.hosted if not is_reserved(i, self.identities)}
        self.store.set_hosted(hosted)
        self.pairs, self.policy_errors = self._policy.compute(policies, self.identities.values(), hosted)
        want, skip = desired_keys(self.pairs, topo, self.identities)
        for key in sorted(skip - self.skipped):
            self._event("skipped", key, reason="reserved-identity", proactive=True)
        self.skipped = skip
        for key, e in list(self.entries.items()):
            reason = invalid_reason(key, topo, self.identities)
            if not reason and e.required and key not in want:
                reason = "policy-removed"
            if reason:
                self._remove(key, reason)
        now = time.time()
        for key in want:
            e = self.entries.setdefault(key, Entry(key))
            if not e.required:
                e.required = True
                if self.cfg.proactive and not e.valid(VALID_MARGIN) and not e.due:
                    self._schedule(e, now)
        self.desired = want
        self._wake.set()

    def on_required(self, req: AuthRequired) -> None:
        """A datapath signal: dedupe, answer from a valid verdict, or queue a handshake."""
        key = req.key
        if is_reserved(key.local_identity, self.identities) or is_reserved(
            key.remote_identity, self.identities
        ):
            self.m.signals.labels(outcome="skipped").inc()
            self._event("skipped", key, reason="reserved-identity")
            return
        e = self.entries.get(key)
        if e is not None and e.valid(VALID_MARGIN):
            # The datapath lacks an entry we hold (it restarted, or the signal was queued before our
            # grant): re-announce instead of handshaking again.
            self.m.signals.labels(outcome="cached").inc()
            self._publish_grant(e)
            return
        if key in self.inflight or key in self.queued:
            self.m.signals.labels(outcome="deduped").inc()
            return
        try:
            self.queue.put_nowait(key)
        except asyncio.QueueFull:
            self.m.signals.labels(outcome="dropped").inc()
            self.m.dropped.inc()
            return
        self.queued.add(key)
        self.m.signals.labels(outcome="queued").inc()
        if e is None:
            self.entries[key] = e = Entry(key)
        e.reactive = True

    def on_svid(self, identity: int, purpose: Purpose, svid: Svid | None) -> None:
        """A new or renewed SVID: (re-)authenticate every wanted entry of that local identity now, so
        verdicts follow the new certificate (Cilium re-authenticates on rotation too)."""
        if purpose != "authd" or svid is None:
            return
        now = time.time()
        for key, e in self.entries.items():
            if key.local_identity == identity and (
                (e.required and self.cfg.proactive) or e.state == "authenticated"
            ):
                self._schedule(e, now)

    def on_responder_success(self, res: ResponderResult, latency: float) -> None:
        self.m.handshakes.labels(role="responder", result="ok", reason="").inc()
        self.m.latency.labels(role="responder").observe(latency)
        key = AuthKey(
            local_identity=res.local_identity,
            remote_identity=res.peer.identity,
            remote_node=res.peer_node,
            auth_type=AUTH_TYPE_SPIRE,
        )
        e = self.entries.get(key)
        # One handshake serves both nodes: publish the reverse direction if this node needs it.
        if key in self.desired or (e is not None and (e.reactive or e.required)) or key in self.queued:
            if e is None:
                e = self.entries[key] = Entry(key)
            self._succeeded(e, res.expires, "responder", latency)

    def on_responder_failure(self, f: AuthFailure, asked: int, peer: LeafInfo | None, src_ip: str) -> None:
        self.m.handshakes.labels(role="responder", result="refused", reason=f.reason).inc()
        node = self.topo.node_by_address.get(src_ip, src_ip)
        key = AuthKey(local_identity=asked, remote_identity=peer.identity if peer else 0, remote_node=node)
        self._event("failed", key, reason=f.reason, detail=f.detail, role="responder")
        log.info("refused handshake from %s: %s", src_ip, f)

    def check_initiator(self, leaf: LeafInfo, src_ip: str) -> str:
        """(Handshake thread.) The initiator's node, if its claimed identity runs there."""
        topo = self.topo
        node = topo.node_by_address.get(src_ip)
        if node is None:
            raise AuthFailure("unknown-node", f"{src_ip} is no node's address")
        if node not in topo.nodes_of(leaf.identity):
            raise AuthFailure("not-on-node", f"identity {leaf.identity} has no endpoint on {node}")
        return node

    # --- loops -------------------------------------------------------------------------------------
    async def publisher(self) -> None:
        """Publish verdicts and events in order; mirror granted entries into KV ``auth`` (the
        datapath re-seeds its map from there after a restart, and authd restores from it)."""
        kv = await self.bus.kv(BUCKET_AUTH.name)
        while True:
            subject, msg = await self._out.get()
            try:
                if subject == KV_PUT:
                    await kv.put(kv_key(self.me, msg.key), encode(msg))
                elif subject == KV_DEL:
                    await kv.delete(kv_key(self.me, msg))
                else:
                    await self.bus.publish(subject, msg)
            except Exception as e:  # NATS down: the entry state stays right; the next change re-sends
                log.warning("publish on %s failed: %s", subject, e)

    def restore(self, stored: Iterable[AuthEntry]) -> int:
        """Adopt the granted entries a previous run of this authd left in KV ``auth`` (as Cilium
        restores its auth map cache): they stay valid, are renewed, and are revoked if they no
        longer stand — instead of lingering unknown in the datapath's map until they expire."""
        now, n = time.time(), 0
        for s in stored:
            if s.key in self.entries:
                continue
            e = self.entries[s.key] = Entry(s.key)
            e.published = True
            e.required, e.reactive, e.via = s.proactive, s.reactive, s.via or "restored"
            e.last_success = e.granted = s.last_success or now
            e.expires = s.expires
            if s.expires > now:
                e.state = "authenticated"
                heapq.heappush(self._expiries, (e.expires, s.key))
                self._schedule(
                    e, renew_at(e.granted, s.expires, is_primary(self.me, s.key), self.cfg.renew_fraction)
                )
            else:
                e.state = "expired"
                self._schedule(e, now)
            n += 1
        self._wake.set()
        return n

    async def reactive_loop(self) -> None:
        """Take signals off the bounded queue only as fast as handshakes can start, so the queue —
        not a pile of waiting tasks — holds the backlog and overflows (counted) when full."""
        while True:
            await self._reactive_slots.acquire()
            key = await self.queue.get()
            self.queued.discard(key)
            if not self._start(key, "reactive", self._reactive_slots):
                self._reactive_slots.release()

    async def scheduler(self) -> None:
        """Start due handshakes; expire verdicts nobody renewed in time. Two heaps (due times,
        expiries) with lazy deletion: a wake costs O(log n) per item that is actually due."""
        while True:
            now = time.time()
            while self._expiries and self._expiries[0][0] <= now:
                exp, key = heapq.heappop(self._expiries)
                e = self.entries.get(key)
                if e is None or e.state != "authenticated" or e.expires != exp:
                    continue  # renewed or removed since
                e.state = "expired"
                self._event("expired", key, reason="not-renewed", expires=e.expires)
                self._revoke(e)
                if (e.required or e.reactive) and not e.due:
                    self._schedule(e, now)
            while self._dues and self._dues[0][0] <= now:
                due, key = heapq.heappop(self._dues)
                e = self.entries.get(key)
                if e is None or e.due != due:
                    continue  # rescheduled or removed since
                if key in self.inflight or key in self.queued:
                    self._schedule(e, now + 0.05)  # look again once that attempt is over
                    continue
                e.due = 0.0
                self._start(key, "proactive" if e.required else "renewal")
            heads = [h[0][0] for h in (self._dues, self._expiries) if h]
            nxt = min(heads) if heads else now + 3600.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, nxt - time.time()))
            except TimeoutError:
                pass

    def _schedule(self, e: Entry, when: float) -> None:
        e.due = when
        heapq.heappush(self._dues, (when, e.key))
        self._wake.set()

    # --- handshakes -------------------------------------------------------------------------------
    def _start(self, key: AuthKey, origin: str, slot: asyncio.Semaphore | None = None) -> bool:
        if key in self.inflight:
            return False
        self.inflight.add(key)
        t = asyncio.create_task(self._authenticate(key, origin, slot))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return True

    async def _authenticate(self, key: AuthKey, origin: str, slot: asyncio.Semaphore | None = None) -> None:
        try:
            async with self._sem:
                e = self.entries.get(key)
                if e is None:
                    return  # removed while queued
                if origin == "reactive" and e.valid(VALID_MARGIN):
                    self._publish_grant(e)  # a responder handshake already served it
                    return
                self._event("requested", key, proactive=e.required, detail=origin)
                t0 = time.perf_counter()
                try:
                    expires = await self._initiate(key)
                except AuthFailure as f:
                    if self.entries.get(key) is e:
                        self._failed(e, f)
                    return
                if self.entries.get(key) is e:
                    self._succeeded(e, expires, "initiator", time.perf_counter() - t0)
        finally:
            self.inflight.discard(key)
            if slot is not None:
                slot.release()
            self._wake.set()

    async def _initiate(self, key: AuthKey) -> float:
        if self.cfg.mode == "test-always-fail" or key.auth_type == AUTH_TYPE_ALWAYS_FAIL:
            raise AuthFailure("test-always-fail", "authd mode or policy says every handshake fails")
        svid = self.store.get(key.local_identity)
        if svid is None:
            raise AuthFailure("no-svid", f"no SVID yet for local identity {key.local_identity}")
        if svid.client_ctx is None:
            raise AuthFailure("no-bundle", "no trust bundle yet")
        node = self.topo.nodes.get(key.remote_node)
        if node is None or not node.address:
            raise AuthFailure("unknown-node", f"node {key.remote_node!r} has no address")
        call = functools.partial(
            initiate,
            svid.client_ctx,
            host=node.address,
            port=node.auth_port or self.cfg.auth_port,
            source=self.source_address,
            server_name=sni(key.remote_identity, self.store.trust_domain),
            trust_domain=self.store.trust_domain,
            expected_remote=key.remote_identity,
            local_not_after=svid.not_after,
            timeout=self.cfg.handshake_timeout,
        )
        res = await asyncio.get_running_loop().run_in_executor(self.pool, call)
        return res.expires

    def _succeeded(self, e: Entry, expires: float, via: str, latency: float) -> None:
        now = time.time()
        if via == "initiator":
            self.m.handshakes.labels(role="initiator", result="ok", reason="").inc()
            self.m.latency.labels(role="initiator").observe(latency)
        e.state, e.expires, e.granted, e.last_success, e.via = "authenticated", expires, now, now, via
        e.handshakes += 1
        e.retries = 0
        e.last_error = ""
        heapq.heappush(self._expiries, (expires, e.key))
        self._schedule(e, renew_at(now, expires, is_primary(self.me, e.key), self.cfg.renew_fraction))
        self._publish_grant(e)
        self._event(
            "succeeded", e.key, expires=expires, latency_ms=latency * 1000, proactive=e.required, role=via
        )
        self._wake.set()

    def _failed(self, e: Entry, f: AuthFailure) -> None:
        self.m.handshakes.labels(role="initiator", result="failed", reason=f.reason).inc()
        e.failures += 1
        e.retries += 1
        e.last_error = str(f)
        if not e.valid():
            e.state = "failed"
        self._event("failed", e.key, reason=f.reason, detail=f.detail, proactive=e.required, role="initiator")
        transient = f.reason in TRANSIENT
        if (e.required and self.cfg.proactive) or e.published or (transient and e.retries <= 8):
            # A peer whose SVID is still being issued (a pod that just appeared) is ready within
            # milliseconds: retry fast, so the verdict lands long before a SYN retransmit would.
            when = time.time() + min((0.025 if transient else 0.2) * 2 ** (e.retries - 1), 30.0)
            if e.valid():
                when = min(when, max(time.time(), e.expires - VALID_MARGIN))
            self._schedule(e, when)

    def _remove(self, key: AuthKey, reason: str) -> None:
        e = self.entries.pop(key, None)
        if e is None:
            return
        self._revoke(e)
        self._event("removed", key, reason=reason, proactive=e.required)

    # --- output -------------------------------------------------------------------------------------
    def _publish_grant(self, e: Entry) -> None:
        e.published = True
        self.m.verdicts.labels(kind="granted").inc()
        self._out.put_nowait((subjects.auth_granted(self.me), AuthVerdict(key=e.key, expires=e.expires)))
        self._out.put_nowait((KV_PUT, e.view(self.me)))

    def _revoke(self, e: Entry) -> None:
        if e.published:
            e.published = False
            self.m.verdicts.labels(kind="revoked").inc()
            self._out.put_nowait((subjects.auth_revoked(self.me), AuthVerdict(key=e.key, expires=e.expires)))
            self._out.put_nowait((KV_DEL, e.key))

    def _event(self, type_: str, key: AuthKey, **kw: Any) -> None:
        ev = AuthEvent(type=type_, key=key, node=self.me, ts=time.time(), **kw)  # type: ignore[arg-type]
        self._out.put_nowait((subjects.auth_events(self.me), ev))

    def _count(self, state: str) -> float:
        return float(sum(1 for e in self.entries.values() if e.state == state))
