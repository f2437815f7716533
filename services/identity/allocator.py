"""Identity allocation, reference counting and GC over the ``identities`` KV bucket.

Keys: ``id.<n>`` → Identity (the source of truth: labels, refs) and ``labels.<sha256>`` →
IdentityRef (the index, and the lock). Allocation, as Cilium's allocator over a kvstore/CRDs:

1. look the label hash up (mirror, else the server); if it names an identity with these labels,
   take a reference (CAS on ``id.<n>``) — done;
2. otherwise pick a random number not known to be in use and create ``id.<n>`` (create-if-absent;
   a conflict means someone holds that number: pick again);
3. create ``labels.<hash>`` → n (create-if-absent). This is the lock: whoever creates it first owns
   the label set. The loser deletes its ``id.<n>`` (unless the index already names it) and takes a
   reference on the winner's number, so racing replicas converge on one number.

``labels.<hash>`` may go stale (a crash between steps, a GC between index read and CAS); an
allocator that finds it pointing at a missing or different identity removes it at its revision and
retries. GC deletes ``id.<n>`` first (CAS at the revision that had no refs), then the index entry, so
a reference taken concurrently makes the GC's CAS fail instead of orphaning the reference.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from nodemesh.kvmirror import Conflict, KvMirror
from nodemesh.labels import (
    RESERVED,
    id_range,
    is_pod_ref,
    is_reserved,
    label_hash,
    parse_endpoint,
    validate_labels,
)
from nodemesh.messages.identity import Identity, IdentityRef
from nodemesh.streams import IDENTITY_KEY_PREFIX, LABELS_KEY_PREFIX, identity_key, labels_key

from .batch import BATCH_IDENTITIES, BatchMixin

__all__ = ["BATCH_IDENTITIES", "AllocationError", "Allocator", "identity_type_for"]

log = logging.getLogger("nodemesh.identity.allocator")
MAX_ATTEMPTS = 64


class AllocationError(Exception):
    pass


def identity_type_for(key: str) -> type[Any] | None:
    if key.startswith(IDENTITY_KEY_PREFIX):
        return Identity
    if key.startswith(LABELS_KEY_PREFIX):
        return IdentityRef
    return None


class Allocator(BatchMixin):
    """Allocates from ``id_range(cluster_id)``; ``mirror`` is the shared identities mirror."""

    def __init__(
        self,
        mirror: KvMirror[Any],
        *,
        cluster_id: int = 0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.m = mirror
        self.lo, self.hi = id_range(cluster_id)
        self.clock = clock
        self.rng = rng or random.Random()
        self._exhausted = 0
        # First attempt on a mirror miss goes straight to create: labels.<hash> create-if-absent is
        # the lock anyway, and a lagging mirror only costs a loser's create + delete (bench: +x%).
        self.trust_mirror_miss = True
        self.batching = False  # set by enable_batching()
        self.on_created: Callable[[Identity], Any] | None = None
        self.on_deleted: Callable[[Identity], Any] | None = None
        # (namespace, pod) → {(identity, endpoint ref)}, kept from the mirror for O(1) lookups
        self._by_pod: dict[tuple[str, str], set[tuple[int, str]]] = {}
        self._refs_of_id: dict[int, list[str]] = {}
        mirror.on_update = self._index
        for key, (value, _rev) in list(mirror.items.items()):
            self._index(key, value, None)

    def _index(self, key: str, value: Any, _old: Any) -> None:
        if not key.startswith(IDENTITY_KEY_PREFIX):
            return
        try:
            n = int(key[3:])
        except ValueError:
            return
        for ref in self._refs_of_id.pop(n, []):  # pod refs only: ext: refs are not the controller's
            pk = parse_endpoint(ref)[1:]
            self._by_pod.get(pk, set()).discard((n, ref))
            if not self._by_pod.get(pk, True):
                del self._by_pod[pk]
        pod_refs = [r for r in value.refs if is_pod_ref(r)] if isinstance(value, Identity) else []
        if pod_refs:
            self._refs_of_id[n] = pod_refs
            for ref in pod_refs:
                self._by_pod.setdefault(parse_endpoint(ref)[1:], set()).add((n, ref))

    def refs_of_pod(self, namespace: str, pod: str) -> list[tuple[int, str]]:
        """(identity, endpoint) references held by a pod (on whichever node)."""
        return sorted(self._by_pod.get((namespace, pod), ()))

    def all_refs(self) -> list[tuple[int, str]]:
        return sorted(r for refs in self._by_pod.values() for r in refs)

    # --- queries ------------------------------------------------------------------------------
    def identity(self, n: int) -> Identity | None:
        held = self.m.get(identity_key(n))
        return held[0] if held is not None and isinstance(held[0], Identity) else None

    def identities(self) -> list[Identity]:
        return sorted((v for v, _ in self.m.items.values() if isinstance(v, Identity)), key=lambda i: i.id)

    def lookup(self, labels: list[str]) -> int | None:
        held = self.m.get(labels_key(label_hash(labels)))
        return held[0].id if held is not None and isinstance(held[0], IdentityRef) else None

    # --- reserved -------------------------------------------------------------------------------
    async def ensure_reserved(self) -> None:
        """Publish the reserved identities 0-11 (idempotent)."""
        for n, lbls in RESERVED.items():
            want = Identity(id=n, labels=sorted(lbls), reserved=True)
            held = self.m.get(identity_key(n))
            if held is not None and held[0] == want:
                continue
            try:
                await self.m.update(identity_key(n), want, last=held[1] if held else 0)
            except Conflict:
                current, rev = await self.m.fetch(identity_key(n))
                if current != want:
                    await self.m.update(identity_key(n), want, last=rev)

    # --- allocation -----------------------------------------------------------------------------
    async def allocate(self, labels: list[str], endpoint: str = "") -> tuple[Identity, bool]:
        """The identity of ``labels`` with a reference for ``endpoint``; (identity, created)."""
        validate_labels(labels)
        labels = sorted(set(labels))
        h = label_hash(labels)
        hkey = labels_key(h)
        for attempt in range(MAX_ATTEMPTS):
            held = self.m.get(hkey)
            if held is None and hkey in self.m.bad:
                _, rev = await self.m.fetch(hkey)
                await self._repair_index(hkey, labels, rev)
                continue
            if held is None and (attempt > 0 or not self.trust_mirror_miss):
                value, rev = await self.m.fetch(hkey)
                held = (value, rev) if value is not None else None
                if held is None and hkey in self.m.bad:
                    await self._repair_index(hkey, labels, rev)
                    continue
            if held is not None:
                ref, hrev = held
                ident = await self.add_ref(ref.id, endpoint, expect_labels=labels)
                if ident is not None:
                    return ident, False
                await self._drop_index(hkey, hrev, ref.id)
                continue
            created = await self._create(labels, hkey, endpoint)
            if created is not None:
                self._exhausted = 0
                return created, True
        if self._pick() is None:
            raise AllocationError(f"identity space {self.lo}..{self.hi} exhausted")
        raise AllocationError(
            f"could not allocate an identity for {len(labels)} labels in {MAX_ATTEMPTS} attempts"
        )

    def _pick(self) -> int | None:
        for _ in range(64):
            n = self.rng.randint(self.lo, self.hi)
            if identity_key(n) not in self.m.present:
                return n
        free = [n for n in range(self.lo, self.hi + 1) if identity_key(n) not in self.m.present]
        return self.rng.choice(free) if free else None

    async def _create(self, labels: list[str], hkey: str, endpoint: str) -> Identity | None:
        now = self.clock()
        n = self._pick()
        if n is None:
            # Full, or full of numbers that racing losers are about to give back: back off.
            self._exhausted += 1
            await asyncio.sleep(0.01 * min(self._exhausted, 20))
            return None
        ident = Identity(
            id=n,
            labels=labels,
            refs=[endpoint] if endpoint else [],
            unused_since=0.0 if endpoint else now,
            created=now,
        )
        try:
            rev = await self.m.create(identity_key(n), ident)
        except Conflict:
            return None  # number taken; the caller picks another
        try:
            await self.m.create(hkey, IdentityRef(id=n))
        except Conflict:
            # Lost the label-set lock to another allocator. Drop our number unless the index
            # (re)names it, then take a reference on the winner's on the next attempt.
            value, _ = await self.m.fetch(hkey)
            if not (isinstance(value, IdentityRef) and value.id == n):
                try:
                    await self.m.delete(identity_key(n), last=rev)
                except Conflict:
                    log.info("identity %d changed before it could be dropped; GC will collect it", n)
                return None
        if self.on_created is not None:
            await self.on_created(ident)
        return ident

    async def _drop_index(self, hkey: str, hrev: int, n: int) -> None:
        log.info("label index %s names identity %d, which is gone or different; removing it", hkey, n)
        try:
            await self.m.delete(hkey, last=hrev)
        except Conflict:
            pass

    async def _repair_index(self, hkey: str, labels: list[str], rev: int) -> None:
        """A corrupt index entry: point it at the existing identity with these labels, else drop it."""
        existing = [i for i in self.identities() if i.labels == labels and not i.reserved]
        try:
            if existing:
                keep = min(existing, key=lambda i: (i.created, i.id))
                log.warning("repairing corrupt %s → identity %d", hkey, keep.id)
                await self.m.update(hkey, IdentityRef(id=keep.id), last=rev)
            else:
                log.warning("dropping corrupt %s (no identity has its labels)", hkey)
                await self.m.delete(hkey, last=rev)
        except Conflict:
            pass

    # --- references ----------------------------------------------------------------------------
    async def add_ref(
        self, n: int, endpoint: str, *, expect_labels: list[str] | None = None
    ) -> Identity | None:
        """Take ``endpoint``'s reference on ``n``; None if ``n`` is gone (or has other labels)."""
        key = identity_key(n)
        for _ in range(MAX_ATTEMPTS):
            held = self.m.get(key)
            if held is None or (expect_labels is not None and held[0].labels != expect_labels):
                # Absent or different *in the mirror* may just be lag (a number given back by a
                # racing loser and reused): only the server's answer may condemn the index entry.
                value, rev = await self.m.fetch(key)
                if not isinstance(value, Identity):
                    return None
                held = (value, rev)
            ident, rev = held
            if expect_labels is not None and ident.labels != expect_labels:
                return None
            if not endpoint or endpoint in ident.refs:
                return ident
            new = msgspec.structs.replace(ident, refs=sorted({*ident.refs, endpoint}), unused_since=0.0)
            try:
                await self.m.update(key, new, last=rev)
                return new
            except Conflict:
                continue
        raise AllocationError(f"identity {n}: too much contention adding a reference")

    async def remove_ref(self, n: int, endpoint: str) -> None:
        key = identity_key(n)
        for _ in range(MAX_ATTEMPTS):
            held = self.m.get(key)
            if held is None or not isinstance(held[0], Identity) or endpoint not in held[0].refs:
                return
            ident, rev = held
            refs = [r for r in ident.refs if r != endpoint]
            new = msgspec.structs.replace(ident, refs=refs, unused_since=0.0 if refs else self.clock())
            try:
                await self.m.update(key, new, last=rev)
                return
            except Conflict:
                continue
        raise AllocationError(f"identity {n}: too much contention dropping a reference")

    # --- GC ------------------------------------------------------------------------------------
    async def gc(self, grace: float) -> list[int]:
        """Collect identities unused for ``grace`` seconds; mark unreferenced ones without a mark."""
        now = self.clock()
        removed: list[int] = []
        for ident in self.identities():
            if is_reserved(ident.id) or ident.refs:
                continue
            held = self.m.get(identity_key(ident.id))
            if held is None:
                continue
            rev = held[1]
            try:
                if ident.unused_since <= 0:
                    await self.m.update(
                        identity_key(ident.id), msgspec.structs.replace(ident, unused_since=now), last=rev
                    )
                    continue
                if now - ident.unused_since < grace:
                    continue
                await self.m.delete(identity_key(ident.id), last=rev)
            except Conflict:
                continue  # changed under us (a new reference): not garbage
            removed.append(ident.id)
            hkey = labels_key(label_hash(ident.labels))
            idx = self.m.get(hkey)
            if idx is not None and isinstance(idx[0], IdentityRef) and idx[0].id == ident.id:
                try:
                    await self.m.delete(hkey, last=idx[1])
                except Conflict:
                    pass
            log.info("collected identity %d (unused for %.0fs)", ident.id, now - ident.unused_since)
            if self.on_deleted is not None:
                await self.on_deleted(ident)
        return removed
