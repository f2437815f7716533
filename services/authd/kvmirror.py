"""A local copy of one JetStream KV bucket, kept current by a watch (identities, ipcache, nodes, trust)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.errors import DecodeError

__all__ = ["KvMirror"]

T = TypeVar("T")
log = logging.getLogger("nodemesh.authd.kv")


class KvMirror(Generic[T]):
    """``values[key]`` for every key of ``bucket``; ``on_change(key, value or None)`` after each
    change; :attr:`synced` once the initial values are in. A value that does not decode is logged and
    treated as absent (never a crash, never a half-applied value). Only keys starting with ``prefix``
    are mirrored (the identities bucket also holds ``labels.*`` index keys)."""

    def __init__(
        self, bus: Bus, bucket: str, tp: type[T], on_change: Callable[[str, T | None], None], prefix: str = ""
    ) -> None:
        self.bus = bus
        self.prefix = prefix
        self.bucket = bucket
        self.tp = tp
        self.on_change = on_change
        self.values: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.decode_errors = 0

    async def run(self) -> None:
        while True:
            try:
                kv = await self.bus.kv(self.bucket)
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self.synced.set()
                        continue
                    self._apply(entry.key, entry.value, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch is recreated; the mirror keeps its values
                log.warning("watch of KV %s failed, restarting: %s", self.bucket, e)
                await asyncio.sleep(1.0)

    def _apply(self, key: str, data: bytes | None, op: str | None) -> None:
        if not key.startswith(self.prefix):
            return
        value: T | None = None
        if op not in ("DEL", "PURGE") and data:
            try:
                value = decode(data, self.tp, subject=f"kv.{self.bucket}.{key}")
            except DecodeError as e:
                self.decode_errors += 1
                log.warning("ignoring undecodable KV value: %s", e)
        if value is None:
            if self.values.pop(key, None) is None:
                return
        else:
            self.values[key] = value
        self.on_change(key, value)
