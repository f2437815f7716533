"""Local controllers: what kube-controller-manager (and Cilium's operator) do, inside the API server.

Each controller is a level-triggered ``reconcile(store)`` pass over the whole store that writes
only differences, so a pass that finds nothing to do writes nothing and the loop settles. The
:class:`ControllerManager` runs every pass after any change (debounced), in a fixed order:
garbage collection, bootstrap objects, Deployments, ReplicaSets, scheduling, Gateway Services,
Ingress Services, LB-IPAM, EndpointSlices, and kube-dns' EndpointSlice when the cluster runs a DNS
server (controllers/clusterdns.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from localcluster.apiserver.controllers.clusterdns import ClusterDns
from localcluster.apiserver.controllers.endpointslices import reconcile_endpointslices
from localcluster.apiserver.controllers.gateway import reconcile_gateways
from localcluster.apiserver.controllers.gc import reconcile_gc
from localcluster.apiserver.controllers.ingress import reconcile_ingresses
from localcluster.apiserver.controllers.lbipam import LbIpam
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
        self, store: Store, *, lb_pool: str = "127.0.100.0/24", debounce: float = 0.02, dns_addr: str = ""
    ) -> None:
        self.store = store
        self.debounce = debounce
        self.lbipam = LbIpam(lb_pool)
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self._controllers: list[tuple[str, Callable[[Store], int]]] = [
            ("garbage-collector", reconcile_gc),
            ("deployment", reconcile_deployments),
            ("replicaset", reconcile_replicasets),
            ("scheduler", schedule_pods),
            ("gateway-service", reconcile_gateways),
            ("ingress-service", reconcile_ingresses),
            ("lb-ipam", self.lbipam.reconcile),
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

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)  # batch a burst of changes into one pass
            self._dirty.clear()
            # Our own writes set _dirty again; the next pass confirms there is nothing left to do.
            self.run_once()
