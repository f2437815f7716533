"""Per-node snapshot cache with watches; knows nothing about gRPC (the server consumes it).

The control plane sets a snapshot per node (``set_snapshot``) or a default for every node without
one (``set_default``). A stream serving a node holds a :class:`Watch`, which wakes whenever that
node's effective snapshot changes version. Setting a snapshot equal (by content version) to the
current one is a no-op: nothing wakes, nothing is pushed. Nothing is served before the first
snapshot is set (the app sets snapshots only after its initial sync).
"""

from __future__ import annotations

import asyncio

from services.xds.snapshot import Snapshot

__all__ = ["SnapshotCache", "Watch"]


class Watch:
    """A node's view of the cache: ``await watch.changed()`` returns when its snapshot changed."""

    def __init__(self, cache: SnapshotCache, node: str) -> None:
        self.cache = cache
        self.node = node
        self._event = asyncio.Event()
        self._event.set()  # the first wait returns at once with whatever is there

    def snapshot(self) -> Snapshot | None:
        return self.cache.get(self.node)

    def notify(self) -> None:
        self._event.set()

    async def changed(self) -> Snapshot | None:
        """Wait for a change (or the initial state) and return the node's current snapshot."""
        await self._event.wait()
        self._event.clear()
        return self.snapshot()

    def close(self) -> None:
        self.cache._unwatch(self)


class SnapshotCache:
    """Snapshots per node plus an optional default; watches are woken on effective changes."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._default: Snapshot | None = None
        self._watches: dict[str, set[Watch]] = {}

    def get(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node, self._default)

    def nodes(self) -> list[str]:
        """Nodes that have their own snapshot."""
        return sorted(self._snapshots)

    def watched_nodes(self) -> list[str]:
        """Nodes with at least one open stream."""
        return sorted(n for n, ws in self._watches.items() if ws)

    def set_snapshot(self, node: str, snap: Snapshot) -> bool:
        """Set ``node``'s snapshot; returns False (and wakes nothing) if its content is unchanged."""
        before = self.get(node)
        self._snapshots[node] = snap
        if before == snap:
            return False
        self._notify(node)
        return True

    def set_default(self, snap: Snapshot) -> bool:
        """Set the snapshot of every node without its own; returns False if unchanged."""
        before = self._default
        self._default = snap
        if before == snap:
            return False
        for node in list(self._watches):
            if node not in self._snapshots:
                self._notify(node)
        return True

    def clear(self, node: str) -> None:
        """Forget ``node``'s own snapshot (it falls back to the default)."""
        before = self.get(node)
        self._snapshots.pop(node, None)
        if before != self.get(node):
            self._notify(node)

    def watch(self, node: str) -> Watch:
        w = Watch(self, node)
        self._watches.setdefault(node, set()).add(w)
        return w

    def _unwatch(self, w: Watch) -> None:
        ws = self._watches.get(w.node)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._watches[w.node]

    def _notify(self, node: str) -> None:
        for w in self._watches.get(node, ()):
            w.notify()
