"""A KV bucket mirrored in memory (watch), with compare-and-set writes that keep the mirror current.

Every identity replica mirrors the buckets it owns: reads are local, writes are CAS against the
revision the mirror holds (a conflict refreshes that key from the server and lets the caller
retry). An entry that does not decode is logged, counted in ``bad`` and skipped: it never enters
the mirror, so it can never be mistaken for valid state, but its key is remembered in ``present``
(an allocator must not take a number whose key exists, even if its value is garbage).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from nodemesh.codec import decode, encode
from nodemesh.errors import DecodeError

__all__ = ["Conflict", "KvMirror"]

T = TypeVar("T")
log = logging.getLogger("nodemesh.identity.kv")

_WRONG_LAST_SEQ = (10071, 10164)


class Conflict(Exception):
    """A CAS write lost: the key changed since the revision we held."""


class KvMirror(Generic[T]):
    """Keys of one bucket decoded by ``type_for(key)`` (None: ignore the key)."""

    def __init__(self, kv: KeyValue, bucket: str, type_for: Callable[[str], type[Any] | None]) -> None:
        self.kv = kv
        self.bucket = bucket
        self.type_for = type_for
        self.items: dict[str, tuple[T, int]] = {}
        self.present: set[str] = set()  # every live key, including undecodable ones
        self.bad: dict[str, str] = {}  # key → why it did not decode
        self._revs: dict[str, int] = {}  # last revision applied per key (deletes included)
        self.synced = asyncio.Event()
        self.on_update: Callable[[str, T | None, int], None] | None = None
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._loop(), name=f"kvmirror:{self.bucket}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as e:  # connection already closed
                log.debug("watcher stop: %s", e)

    async def _loop(self) -> None:
        while True:
            entry = await self._watcher._updates.get()
            if entry is None:
                self.synced.set()
                continue
            if not hasattr(entry, "key"):  # stop sentinel
                return
            if entry.operation in (KV_DEL, KV_PURGE):
                self._apply(entry.key, None, int(entry.revision), deleted=True)
            else:
                self._apply(entry.key, entry.value or b"", int(entry.revision))

    # --- applying ------------------------------------------------------------------------------
    def _decode(self, key: str, data: bytes) -> T | None:
        tp = self.type_for(key)
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
        if not force and self._revs.get(key, 0) > revision:
            return  # the watcher is behind our own CAS write of this key
        self._revs[key] = revision
        if deleted or data is None:
            self.items.pop(key, None)
            self.present.discard(key)
            self.bad.pop(key, None)
            value = None
        else:
            self.present.add(key)
            value = self._decode(key, data)
            if value is None:
                self.items.pop(key, None)
            else:
                self.bad.pop(key, None)
                self.items[key] = (value, revision)
        if self.on_update is not None:
            self.on_update(key, value, revision)

    # --- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[T, int] | None:
        return self.items.get(key)

    async def fetch(self, key: str) -> tuple[T | None, int]:
        """Read one key from the server (not the mirror): (value or None if absent/corrupt, revision)."""
        try:
            entry = await self.kv.get(key)
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
    async def create(self, key: str, value: T) -> int:
        """Create-if-absent; :class:`Conflict` if the key exists."""
        try:
            rev = int(await self.kv.create(key, encode(value)))
        except KeyWrongLastSequenceError as e:
            self.present.add(key)
            raise Conflict(key) from e
        self._apply_written(key, value, rev)
        return rev

    async def update(self, key: str, value: T, last: int) -> int:
        """Write if the key is still at revision ``last`` (0: absent); :class:`Conflict` otherwise."""
        try:
            rev = int(await self.kv.update(key, encode(value), last=last))
        except KeyWrongLastSequenceError as e:
            await self.fetch(key)
            raise Conflict(key) from e
        self._apply_written(key, value, rev)
        return rev

    async def delete(self, key: str, last: int) -> int:
        """Delete if still at revision ``last``; returns the delete marker's revision."""
        headers = {KV_OP: KV_DEL, "Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self.kv._js.publish(f"$KV.{self.bucket}.{key}", b"", headers=headers)
        except APIError as e:
            if e.err_code in _WRONG_LAST_SEQ:
                await self.fetch(key)
                raise Conflict(key) from e
            raise
        rev = int(ack.seq)
        self._apply(key, None, rev, deleted=True)
        return rev

    def _apply_written(self, key: str, value: T, rev: int) -> None:
        self._revs[key] = rev
        self.present.add(key)
        self.bad.pop(key, None)
        self.items[key] = (value, rev)
        if self.on_update is not None:
            self.on_update(key, value, rev)
