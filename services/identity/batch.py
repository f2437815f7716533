"""Batch pre-allocation for :class:`services.identity.allocator.Allocator` (JetStream atomic batches).

A batch writes ``id.<n>`` + ``labels.<hash>`` for up to ``BATCH_IDENTITIES`` new label sets as one
atomic batch (nats-server >= 2.12, ``allow_atomic`` on the bucket's stream): every message carries
its expected last revision, the server commits all or nothing. A rejected batch falls back to
one-by-one allocation, so the outcome equals allocating one by one; only the acks are saved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nodemesh.codec import encode
from nodemesh.labels import label_hash, validate_labels
from nodemesh.messages.identity import Identity, IdentityRef
from nodemesh.streams import identity_key, labels_key

if TYPE_CHECKING:
    from nodemesh.kvmirror import KvMirror

__all__ = ["BATCH_IDENTITIES", "BatchMixin"]

log = logging.getLogger("nodemesh.identity.allocator")
BATCH_IDENTITIES = 250  # two messages each; nats-server's default atomic batch limit is 1000


class BatchMixin:
    """Needs the allocator's mirror, picker, clock, rng, allocate() and on_created."""

    m: KvMirror[Any]
    rng: random.Random
    clock: Callable[[], float]
    batching: bool
    on_created: Callable[[Identity], Any] | None

    def _pick(self) -> int | None:
        raise NotImplementedError

    def identity(self, n: int) -> Identity | None:
        raise NotImplementedError

    def allocate(self, labels: list[str], endpoint: str = "") -> Awaitable[tuple[Identity, bool]]:
        raise NotImplementedError

    # --- batched allocation (JetStream atomic batch) --------------------------------------------
    async def enable_batching(self) -> bool:
        """Whether the bucket's stream allows atomic batch publish (nats-server >= 2.12)."""
        js = self.m.bus.js
        try:
            # The admin step turns it on (nodemesh/streams.py); this service may not update streams.
            info = await js.stream_info(f"KV_{self.m.bucket}")
            self.batching = bool(info.config.allow_atomic)
            if not self.batching:
                log.info("atomic batches off on KV_%s; allocating one identity at a time", self.m.bucket)
        except Exception as e:
            log.info("atomic batches unavailable (%s); allocating one identity at a time", e)
            self.batching = False
        return self.batching

    async def allocate_batch(self, label_sets: list[list[str]]) -> list[Identity]:
        """Allocate many label sets (no references) in atomic batches of ``BATCH_IDENTITIES``.

        One batch = ``id.<n>`` + ``labels.<hash>`` for each new set, each with its expected last
        revision (0, or the delete marker's), committed all-or-nothing by the server. A rejected
        batch (a race with another allocator, a stale mirror) falls back to :meth:`allocate` per
        set, so the result is the same as allocating one by one — only cheaper when nobody races.
        """
        out: dict[str, Identity] = {}
        todo: dict[str, list[str]] = {}
        single: dict[str, list[str]] = {}
        for raw in label_sets:
            validate_labels(raw)
            labels = sorted(set(raw))
            h = label_hash(labels)
            held = self.m.get(labels_key(h))
            ident = (
                self.identity(held[0].id) if held is not None and isinstance(held[0], IdentityRef) else None
            )
            if ident is not None and ident.labels == labels:
                out[h] = ident
            elif labels_key(h) in self.m.revisions:
                # The index key exists or existed: resolving it needs the checks of allocate();
                # a batch only ever *creates* index keys (expected revision 0).
                single[h] = labels
            else:
                todo[h] = labels
        resolved = await asyncio.gather(*(self.allocate(v) for v in single.values()))
        for h, (ident, _) in zip(single, resolved, strict=True):
            out[h] = ident
        items = list(todo.items())
        for i in range(0, len(items), BATCH_IDENTITIES):
            chunk = items[i : i + BATCH_IDENTITIES]
            done = await self._atomic_create(chunk) if self.batching else None
            if done is None:
                done = [r for r, _ in await asyncio.gather(*(self.allocate(lbls) for _, lbls in chunk))]
            for (h, _), ident in zip(chunk, done, strict=True):
                out[h] = ident
        return [out[label_hash(sorted(set(raw)))] for raw in label_sets]

    async def _atomic_create(self, chunk: list[tuple[str, list[str]]]) -> list[Identity] | None:
        now = self.clock()
        taken: set[int] = set()
        msgs: list[tuple[str, Any, int]] = []  # (key, value, expected last revision)
        idents: list[Identity] = []
        for h, labels in chunk:
            n = self._pick()
            for _ in range(100):
                if n is None or n not in taken:
                    break
                n = self._pick()
            if n is None or n in taken:
                return None  # (nearly) full: the one-by-one path backs off and reports it
            taken.add(n)
            ident = Identity(id=n, labels=labels, unused_since=now, created=now)
            idents.append(ident)
            msgs.append((identity_key(n), ident, self.m.revisions.get(identity_key(n), 0)))
            msgs.append((labels_key(h), IdentityRef(id=n), 0))  # the lock: create-if-absent only
        nc = self.m.bus.nc
        batch_id = f"alloc-{self.rng.getrandbits(64):016x}"
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        try:
            for seq, (key, value, last) in enumerate(msgs, 1):
                headers = {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(seq),
                    "Nats-Expected-Last-Subject-Sequence": str(last),
                }
                if seq == len(msgs):
                    headers["Nats-Batch-Commit"] = "1"
                await nc.publish(
                    f"$KV.{self.m.bucket}.{key}",
                    encode(value),
                    headers=headers,
                    reply=inbox if seq == len(msgs) else "",
                )
            reply = await sub.next_msg(timeout=10)
        except Exception as e:
            log.info("atomic batch failed (%s); falling back", e)
            return None
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        ack = json.loads(reply.data or b"{}")
        if "error" in ack or "seq" not in ack:
            log.debug("atomic batch rejected: %s", ack.get("error"))
            return None
        first = int(ack["seq"]) - len(msgs) + 1
        for offset, (key, value, _) in enumerate(msgs):
            self.m._apply_written(key, value, first + offset)
        for ident in idents:
            if self.on_created is not None:
                await self.on_created(ident)
        return idents
