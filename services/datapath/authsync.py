"""The BPF auth map follows KV ``auth``: authd's granted entries for this node.

Verdicts also arrive on core NATS (``auth.granted.<node>`` / ``auth.revoked.<node>``, the fast path),
but a core NATS message published while the datapath restarts or reconnects is lost, and a lost
revocation would leave a pinned entry valid until its expiry. authd mirrors every grant into KV
``auth`` (``<node>.<local>.<remote>.<remote node>.<type>``) and deletes the key on revocation, so
after every (re)sync of that bucket the map is made equal to it (:func:`plan`): entries the bucket
no longer holds are deleted, held ones written. Between syncs the KV watch applies each put and
delete as it happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from nodemesh.bus import Bus
from nodemesh.kvmirror import KvMirror
from nodemesh.messages.auth import AuthEntry
from nodemesh.messages.auth import AuthKey as AuthKeyMsg
from nodemesh.streams import BUCKET_AUTH, auth_node_prefix
from services.datapath.maps import AuthKey, NodeMaps

__all__ = ["AuthSync", "expiry_ns", "plan"]

log = logging.getLogger("nodemesh.datapath.auth")


def expiry_ns(expires_unix: float, now_unix: float, now_mono_ns: int) -> int:
    """authd's unix expiry as the map's CLOCK_MONOTONIC ns."""
    return max(0, now_mono_ns + int((expires_unix - now_unix) * 1e9))


def plan(
    entries: Iterable[AuthEntry],
    held: dict[bytes, int],
    key_of: Callable[[AuthKeyMsg], AuthKey],
    now_unix: float,
    now_mono_ns: int,
) -> tuple[dict[bytes, int], list[bytes]]:
    """(writes, deletes) that make the map (``held``: key bytes → expiry) equal the bucket: every
    unexpired entry written with its expiry, every other key of the map deleted."""
    want = {
        key_of(e.key).to_bytes(): expiry_ns(e.expires, now_unix, now_mono_ns)
        for e in entries
        if e.expires > now_unix
    }
    # an expiry off by conversion jitter is the same grant: rewrite only what differs by > 1 s
    writes = {k: v for k, v in want.items() if k not in held or abs(held[k] - v) > 1_000_000_000}
    return writes, [k for k in held if k not in want]


class AuthSync:
    """KV ``auth`` (this node's keys) → the node's auth map."""

    def __init__(self, bus: Bus, node: str, maps: NodeMaps, key_of: Callable[[AuthKeyMsg], AuthKey]) -> None:
        self.bus = bus
        self.maps = maps
        self.key_of = key_of
        self.reconciles = 0
        self.removed = 0  # entries deleted by reconciles (revocations the core NATS path missed)
        self.mirror: KvMirror[AuthEntry] = KvMirror(
            bus,
            BUCKET_AUTH.name,
            AuthEntry,
            keys=auth_node_prefix(node),
            on_update=self._on_update,
            on_synced=self.reconcile,
        )

    async def run(self) -> None:
        await self.mirror.run()

    async def follow_reconnects(self, interval: float = 1.0) -> None:
        """Watch the bucket again after every NATS reconnect (a watch may have missed deletes)."""
        seen = self._reconnects()
        while True:
            await asyncio.sleep(interval)
            now = self._reconnects()
            if now != seen:
                seen = now
                log.info("NATS reconnected: re-syncing the auth map from KV auth")
                await self.mirror.resync()

    def _reconnects(self) -> int:
        stats = getattr(self.bus.nc, "stats", None) or {}
        return int(stats.get("reconnects", 0))

    def _on_update(self, _key: str, new: AuthEntry | None, old: AuthEntry | None) -> None:
        if new is None:
            if old is not None:
                self.maps.del_auth(self.key_of(old.key))
            return
        if new.expires > time.time():
            self.maps.set_auth(self.key_of(new.key), expiry_ns(new.expires, time.time(), time.monotonic_ns()))
        else:
            self.maps.del_auth(self.key_of(new.key))

    def reconcile(self) -> None:
        held = {k.to_bytes(): exp for k, exp in self.maps.auth_items()}
        writes, deletes = plan(
            self.mirror.values().values(), held, self.key_of, time.time(), time.monotonic_ns()
        )
        for k, exp in writes.items():
            self.maps.set_auth(AuthKey.from_buffer_copy(k), exp)
        for k in deletes:
            self.maps.del_auth(AuthKey.from_buffer_copy(k))
        self.reconciles += 1
        self.removed += len(deletes)
        log.info("auth map reconciled with KV auth", extra={"written": len(writes), "removed": len(deletes)})
