"""A service's local copy of the Kubernetes objects it cares about, rebuilt from the K8S stream.

The K8S stream keeps the last event per object, so replaying it from the start yields the current
state of every object, whenever the consumer starts. :class:`K8sCache` replays it with an ordered
consumer (which recreates itself on gaps or server restarts), keeps ``store[kind][(ns, name)]``, calls
``on_change`` for each change, and sets :attr:`synced` once (a) it has applied every message that
was in the stream when it subscribed and (b) it has seen the watcher's ``Synced`` marker (so the
watcher's initial list is complete). Services open their readiness gate on :attr:`synced`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.streams import STREAM_K8S

__all__ = ["ChangeHandler", "K8sCache", "ObjKey"]

log = logging.getLogger("nodemesh.k8scache")

ObjKey = tuple[str, str]  # (namespace, name)
#: on_change(event, previous object or None); called in stream order, never concurrently.
ChangeHandler = Callable[[ObjectEvent, dict[str, Any] | None], Awaitable[None] | None]


class K8sCache:
    """Objects of ``kinds`` (all kinds if empty), kept current from the K8S stream."""

    def __init__(self, bus: Bus, kinds: Iterable[str] = (), on_change: ChangeHandler | None = None) -> None:
        self.bus = bus
        self.kinds = frozenset(kinds)
        self.on_change = on_change
        self.store: dict[str, dict[ObjKey, dict[str, Any]]] = {}
        self.synced = asyncio.Event()
        self.last_marker: Synced | None = None
        self.applied_seq = 0
        self._target_seq = 0
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    # --- queries ------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get(kind, {}).get((namespace, name))

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        objs = self.store.get(kind, {})
        if namespace is None:
            return list(objs.values())
        return [o for (ns, _), o in objs.items() if ns == namespace]

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and start applying; returns at once (await :attr:`synced` for the full state)."""
        info = await self.bus.js.stream_info(STREAM_K8S.name)
        self._target_seq = int(info.state.last_seq)
        self._sub = await self.bus.js.subscribe(
            "k8s.>",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._enqueue,
        )
        self._task = asyncio.create_task(self._apply_loop(), name="k8scache")
        if self._target_seq == 0:
            self._check_synced()

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as e:  # connection already closed on shutdown
                log.debug("unsubscribe: %s", e)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def latest_marker(self) -> Synced | None:
        """The watcher's last Synced marker straight from the stream (None before the first list)."""
        try:
            raw = await self.bus.js.get_last_msg(STREAM_K8S.name, subjects.K8S_SYNCED)
        except NotFoundError:
            return None
        return self.bus.decode_or_count(raw, Synced)  # type: ignore[arg-type]

    # --- internals ----------------------------------------------------------------------------
    async def _enqueue(self, msg: Msg) -> None:
        await self._queue.put(msg)

    async def _apply_loop(self) -> None:
        while True:
            msg = await self._queue.get()
            seq = int(msg.metadata.sequence.stream) if msg.metadata else 0
            try:
                await self._apply(msg)
            except Exception:
                log.exception("applying %s failed", msg.subject)
            self.applied_seq = max(self.applied_seq, seq)
            self._check_synced()

    async def _apply(self, msg: Msg) -> None:
        if msg.subject == subjects.K8S_SYNCED:
            marker = self.bus.decode_or_count(msg, Synced)
            if marker is not None:
                self.last_marker = marker
            return
        ev = self.bus.decode_or_count(msg, ObjectEvent)
        if ev is None or (self.kinds and ev.kind not in self.kinds):
            return
        objs = self.store.setdefault(ev.kind, {})
        key = (ev.namespace, ev.name)
        prev = objs.get(key)
        if ev.type == "delete":
            if prev is None:
                return  # tombstone of an object we never saw
            del objs[key]
        else:
            objs[key] = ev.obj
        if self.on_change is not None:
            res = self.on_change(ev, prev)
            if res is not None:
                await res

    def _check_synced(self) -> None:
        if not self.synced.is_set() and self.last_marker is not None and self.applied_seq >= self._target_seq:
            self.synced.set()
