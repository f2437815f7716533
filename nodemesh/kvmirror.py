"""One JetStream KV bucket mirrored in memory: typed, self-healing, with compare-and-set writes.

Every service that reads KV state (identities, ipcache, nodes, trust) holds a :class:`KvMirror`:
reads are local, a watch keeps them current, and the identity service — the buckets' writer —
writes through the same mirror with compare-and-set against the revision it holds.

- **Typed**: ``decode_as`` is a msgspec type, or a function of the key giving one (None: ignore the
  key; the identities bucket holds two kinds of values). An entry that does not decode is logged,
  counted in ``bad`` and never enters ``items``, so corrupt state can only remove, never invent,
  an entry; its key stays in ``present`` (an allocator must not take a number whose key exists).
- **Self-healing**: a watch that fails or ends is recreated after a pause. The new watch's initial
  values are compared with what the mirror holds and keys that vanished meanwhile are removed
  (with ``on_update``), so a mirror never keeps a deleted entry after a reconnect.
- **CAS**: :meth:`create` (create-if-absent), :meth:`update` (at a revision), :meth:`delete`
  (at a revision) raise :class:`Conflict` when another writer got there first, after refreshing
  that key from the server so the caller can retry on current data.

``on_update(key, new, old)`` runs after every change (``None`` for absent) on the event loop;
``on_synced()`` after every (re)watch has delivered the server's current values (the first sync and
each one after a reconnect), for consumers that reconcile derived state against the whole bucket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from nodemesh.bus import Bus
from nodemesh.codec import decode, encode
from nodemesh.errors import DecodeError

__all__ = ["Conflict", "KvMirror"]

T = TypeVar("T")
log = logging.getLogger("nodemesh.kvmirror")

_WRONG_LAST_SEQ = (10071, 10164)  # JetStream's "wrong last sequence" error codes


class Conflict(Exception):
    """A CAS write lost: the key changed since the revision we held."""


class KvMirror(Generic[T]):
    """``items[key] = (value, revision)`` for every key of ``bucket`` matching ``keys``."""

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        decode_as: type[T] | Callable[[str], type[Any] | None],
        *,
        keys: str = ">",
        on_update: Callable[[str, T | None, T | None], None] | None = None,
        retry_after: float = 1.0,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.on_synced = on_synced
        self.bucket = bucket
        self.keys = keys
        self.on_update = on_update
        self.retry_after = retry_after
        self._type_for: Callable[[str], type[Any] | None] = (
            (lambda _k: decode_as) if isinstance(decode_as, type) else decode_as
        )
        self.items: dict[str, tuple[T, int]] = {}
        self.present: set[str] = set()  # every live key, including undecodable ones
        self.bad: dict[str, str] = {}  # key → why it did not decode
        self.revisions: dict[str, int] = {}  # last revision applied per key (deletes included)
        self.synced = asyncio.Event()
        self.restarts = 0
        self.kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._resync: set[str] | None = None  # keys seen since a (re)watch began, until its end marker

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the bucket and begin watching; returns at once (``synced`` says when it caught up)."""
        self.kv = await self.bus.kv(self.bucket)
        self._task = asyncio.create_task(self._run(), name=f"kvmirror:{self.bucket}")

    async def run(self) -> None:
        """:meth:`start` and wait until cancelled, for services that spawn their mirrors as tasks."""
        await self.start()
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        finally:
            await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._stop_watcher()

    async def resync(self) -> None:
        """Watch again from the server's current values (e.g. after a NATS reconnect): keys deleted
        meanwhile are removed and ``on_synced`` runs once the new watch caught up."""
        await self._stop_watcher()

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()
            except Exception as e:  # connection already closed on shutdown
                log.debug("watcher stop: %s", e)

    async def _run(self) -> None:
        while True:
            try:
                await self._watch_once()
                log.warning("watch of KV %s ended; restarting", self.bucket)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch is recreated; the mirror keeps its values
                log.warning("watch of KV %s failed, restarting: %r", self.bucket, e)
            await self._stop_watcher()
            self.restarts += 1
            await asyncio.sleep(self.retry_after)

    async def _watch_once(self) -> None:
        if self.kv is None:
            self.kv = await self.bus.kv(self.bucket)
        self._resync = set()
        self._watcher = await self.kv.watch(self.keys)
        async for entry in self._watcher:
            if entry is None:  # the end of the initial values
                self._sweep()
                self.synced.set()
                if self.on_synced is not None:
                    try:
                        self.on_synced()
                    except Exception:  # a consumer's failure must not stop the mirror
                        log.exception("on_synced of KV %s failed", self.bucket)
                continue
            key = str(entry.key)
            if self._resync is not None:
                self._resync.add(key)
            if entry.operation in (KV_DEL, KV_PURGE):
                self._apply(key, None, int(entry.revision or 0), deleted=True)
            else:
                self._apply(key, entry.value or b"", int(entry.revision or 0))

    def _sweep(self) -> None:
        """After a (re)watch's initial values: drop keys the server no longer has."""
        seen, self._resync = self._resync, None
        if seen is None:
            return
        for key in sorted(self.present - seen):
            self._apply(key, None, self.revisions.get(key, 0), deleted=True, force=True)

    # --- applying ------------------------------------------------------------------------------
    def _decode(self, key: str, data: bytes) -> T | None:
        tp = self._type_for(key)
        if tp is None:
            return None
        try:
            value: T = decode(data, tp, subject=f"$KV.{self.bucket}.{key}")
            return value
        except DecodeError as e:
            if self.bad.get(key) != str(e):
                log.warning(
                    "skipping corrupt KV entry", extra={"bucket": self.bucket, "key": key, "error": str(e)}
                )
            self.bad[key] = str(e)
            return None

    def _apply(
        self, key: str, data: bytes | None, revision: int, *, deleted: bool = False, force: bool = False
    ) -> None:
        if not force and self.revisions.get(key, 0) > revision:
            return  # the watch is behind our own CAS write of this key
        self.revisions[key] = revision
        held = self.items.get(key)
        old = held[0] if held is not None else None
        value: T | None = None
        if deleted or data is None:
            self.items.pop(key, None)
            self.present.discard(key)
            self.bad.pop(key, None)
        else:
            self.present.add(key)
            value = self._decode(key, data)
            if value is None:
                self.items.pop(key, None)
            else:
                self.bad.pop(key, None)
                self.items[key] = (value, revision)
        if value is None and old is None:
            return
        self._notify(key, value, old)

    def _notify(self, key: str, new: T | None, old: T | None) -> None:
        if self.on_update is None:
            return
        try:
            self.on_update(key, new, old)
        except Exception:  # one bad consumer callback must not stop the mirror
            log.exception("applying %s/%s failed", self.bucket, key)

    # --- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[T, int] | None:
        return self.items.get(key)

    def value(self, key: str) -> T | None:
        held = self.items.get(key)
        return held[0] if held is not None else None

    def values(self) -> dict[str, T]:
        """A snapshot of every decoded value by key."""
        return {k: v for k, (v, _) in self.items.items()}

    def revision(self, key: str) -> int:
        """The last revision seen for ``key`` (0: never seen) — the ``last`` a CAS write needs."""
        return self.revisions.get(key, 0)

    async def fetch(self, key: str) -> tuple[T | None, int]:
        """Read one key from the server (not the mirror): (value or None if absent/corrupt, revision)."""
        kv = await self._kv()
        try:
            entry = await kv.get(key)
        except KeyDeletedError as e:
            rev = int(e.entry.revision or 0) if e.entry is not None else 0
            self._apply(key, None, rev, deleted=True, force=True)
            return None, rev
        except KeyNotFoundError:
            self._apply(key, None, 0, deleted=True, force=True)
            return None, 0
        rev = int(entry.revision or 0)
        self._apply(key, entry.value or b"", rev, force=True)
        held = self.items.get(key)
        return (held[0] if held is not None and held[1] == rev else None), rev

    # --- writes (compare-and-set) --------------------------------------------------------------
    async def _kv(self) -> KeyValue:
        if self.kv is None:
            self.kv = await self.bus.kv(self.bucket)
        return self.kv

    async def create(self, key: str, value: T) -> int:
        """Create-if-absent; :class:`Conflict` if the key exists."""
        kv = await self._kv()
        try:
            rev = int(await kv.create(key, encode(value)))
        except KeyWrongLastSequenceError as e:
            self.present.add(key)
            raise Conflict(key) from e
        self._apply_written(key, value, rev)
        return rev

    async def update(self, key: str, value: T, last: int) -> int:
        """Write if the key is still at revision ``last`` (0: absent); :class:`Conflict` otherwise."""
        kv = await self._kv()
        try:
            rev = int(await kv.update(key, encode(value), last=last))
        except KeyWrongLastSequenceError as e:
            await self.fetch(key)
            raise Conflict(key) from e
        self._apply_written(key, value, rev)
        return rev

    async def delete(self, key: str, last: int) -> int:
        """Delete if still at revision ``last``; returns the delete marker's revision."""
        await self._kv()
        headers = {KV_OP: KV_DEL, "Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self.bus.js.publish(f"$KV.{self.bucket}.{key}", b"", headers=headers)
        except APIError as e:
            if e.err_code in _WRONG_LAST_SEQ:
                await self.fetch(key)
                raise Conflict(key) from e
            raise
        rev = int(ack.seq)
        self._apply(key, None, rev, deleted=True)
        return rev

    def _apply_written(self, key: str, value: T, rev: int) -> None:
        self.revisions[key] = rev
        self.present.add(key)
        self.bad.pop(key, None)
        held = self.items.get(key)
        self.items[key] = (value, rev)
        self._notify(key, value, held[0] if held is not None else None)
