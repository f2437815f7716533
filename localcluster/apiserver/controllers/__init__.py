"""Local controllers: what kube-controller-manager and the scheduler do, inside the API server.

Each controller is a level-triggered ``reconcile(store)`` pass over the whole store that writes
only differences, so a pass that finds nothing to do writes nothing and the loop settles. The
:class:`ControllerManager` runs every pass after any change (debounced), in a fixed order:
garbage collection, node lifecycle (when heartbeats are monitored), Deployments, ReplicaSets,
scheduling, EndpointSlices, and kube-dns' EndpointSlice when the cluster runs a DNS server
(controllers/clusterdns.py). What Cilium's operator does (Gateway and Ingress LoadBalancer Services,
LB-IPAM) is services/operator's, which writes through the watcher as against any API server; the
server only creates the initial CiliumLoadBalancerIPPool (controllers/bootstrap.py). The node
lifecycle controller also runs on its own every few seconds (and when a toleration runs out), since
a missing heartbeat is no change in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from localcluster.apiserver.controllers.clusterdns import ClusterDns
from localcluster.apiserver.controllers.endpointslices import reconcile_endpointslices
from localcluster.apiserver.controllers.gc import reconcile_gc
from localcluster.apiserver.controllers.nodelifecycle import NodeLifecycle
from localcluster.apiserver.controllers.workloads import (
    reconcile_deployments,
    reconcile_replicasets,
    schedule_pods,
)
from localcluster.apiserver.store import Store, WatchEvent

__all__ = ["ControllerManager"]

log = logging.getLogger("localcluster.apiserver.controllers")


class ControllerManager:
    def __init__(
        self,
        store: Store,
        *,
        debounce: float = 0.02,
        dns_addr: str = "",
        node_grace: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.debounce = debounce
        #: None: Nodes are static (always Ready, no heartbeats expected), as without a node agent.
        self.nodes = NodeLifecycle(node_grace, clock) if node_grace > 0 else None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self._controllers: list[tuple[str, Callable[[Store], int]]] = [
            ("garbage-collector", reconcile_gc),
            *([("node-lifecycle", self.nodes.reconcile)] if self.nodes is not None else []),
            ("deployment", reconcile_deployments),
            ("replicaset", reconcile_replicasets),
            ("scheduler", schedule_pods),
            ("endpointslice", reconcile_endpointslices),
        ]
        if dns_addr:
            self._controllers.append(("cluster-dns", ClusterDns(dns_addr).reconcile))

    def _on_event(self, _: WatchEvent) -> None:
        self._dirty.set()

    def run_once(self) -> int:
        """One pass of every controller; returns how many writes it made."""
        writes = 0
        for name, fn in self._controllers:
            try:
                writes += fn(self.store)
            except Exception:
                log.exception("controller %s failed", name)
        self.passes += 1
        return writes

    async def start(self) -> None:
        self.store.add_listener(self._on_event)
        self._dirty.set()
        self._task = asyncio.create_task(self._loop(), name="localapi-controllers")

    async def stop(self) -> None:
        self.store.remove_listener(self._on_event)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _idle_timeout(self) -> float | None:
        if self.nodes is None:
            return None
        due = self.nodes.next_eviction(self.store)
        return self.nodes.period if due is None else min(self.nodes.period, due + 0.05)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), self._idle_timeout())
            except TimeoutError:
                if self.nodes is not None:  # a heartbeat that did not come is no store event
                    try:
                        self.nodes.reconcile(self.store)  # its writes wake the other controllers
                    except Exception:
                        log.exception("controller node-lifecycle failed")
                continue
            await asyncio.sleep(self.debounce)  # batch a burst of changes into one pass
            self._dirty.clear()
            # Our own writes set _dirty again; the next pass confirms there is nothing left to do.
            self.run_once()
