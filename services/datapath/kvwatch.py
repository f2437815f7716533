"""Watch a JetStream KV bucket and hand every (key, new value, old value) to a callback.

The initial values come first; ``synced`` is set after them. An entry that does not decode is
logged and treated as absent (it never reaches the callback as a value), so corrupt state can only
remove, never invent, an ipcache or identity entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from nats.js.kv import KV_DEL, KV_PURGE

from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.errors import DecodeError

__all__ = ["watch_bucket"]

T = TypeVar("T")
log = logging.getLogger("nodemesh.datapath.kv")


async def watch_bucket(
    bus: Bus,
    bucket: str,
    tp: type[T],
    on_update: Callable[[str, T | None, T | None], None],
    synced: asyncio.Event,
    keys: str = ">",
) -> None:
    kv = await bus.kv(bucket)
    watcher: Any = await kv.watch(keys)
    current: dict[str, T] = {}
    try:
        while True:
            entry = await watcher._updates.get()
            if entry is None:
                synced.set()
                continue
            if not hasattr(entry, "key"):
                return
            key = str(entry.key)
            new: T | None = None
            if entry.operation not in (KV_DEL, KV_PURGE):
                try:
                    new = decode(entry.value or b"", tp, subject=f"$KV.{bucket}.{key}")
                except DecodeError as e:
                    log.warning(
                        "skipping corrupt KV entry", extra={"bucket": bucket, "key": key, "error": str(e)}
                    )
            old = current.pop(key, None)
            if new is not None:
                current[key] = new
            if new is None and old is None:
                continue
            try:
                on_update(key, new, old)
            except Exception:
                log.exception("applying %s/%s failed", bucket, key)
    finally:
        try:
            await watcher.stop()
        except Exception as e:  # connection already closed on shutdown
            log.debug("watcher stop: %s", e)
