"""IP → Endpoint from the datapath agent's mirrors (ipcache and identity labels), memoized.

The agent bumps ``version`` whenever the ipcache or identity labels change, so answers are cached per
version: a steady stream of requests between the same endpoints costs a dict lookup each.
"""

from __future__ import annotations

from typing import Protocol

from nodemesh.messages.flow import Endpoint
from nodemesh.messages.identity import IPCacheEntry
from nodemesh.workload import pod_workload
from services.datapath.accesslog.convert import Enrich

__all__ = ["Mirror", "mirror_enricher"]

_HOST_ID = 1


class Mirror(Protocol):
    """What the datapath agent already holds (``services.datapath.agent.Agent`` satisfies it)."""

    version: int
    ipcache: dict[str, IPCacheEntry]
    node_ip: str

    def labels_of(self, identity: int) -> list[str]: ...


def mirror_enricher(m: Mirror, cache_size: int = 4096) -> Enrich:
    cache: dict[tuple[int, str], Endpoint | None] = {}

    def enrich(ip: str) -> Endpoint | None:
        key = (m.version, ip)
        if key in cache:
            return cache[key]
        if len(cache) >= cache_size:
            cache.clear()
        e = m.ipcache.get(ip)
        ep: Endpoint | None = None
        if e is not None:
            w = pod_workload(e.pod)
            ep = Endpoint(
                identity=e.identity,
                namespace=e.namespace,
                pod_name=e.pod,
                labels=m.labels_of(e.identity),
                workloads=[w] if w is not None else [],
            )
        elif ip.startswith("127.") or ip == m.node_ip:
            # Loopback and the node's own address are the host (the ipcache holds node addresses
            # only for remote nodes' lookups in the kernel).
            ep = Endpoint(identity=_HOST_ID, labels=m.labels_of(_HOST_ID))
        cache[key] = ep
        return ep

    return enrich
