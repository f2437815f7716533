"""This node's pods as endpoints: netns + veth + address (the CNI ADD/DEL path), and local workloads.

``add(pod)`` is what a CNI ADD does (and what the CNI plugin contract in docs/datapath.md reaches in
Kubernetes): allocate (or re-find) the address and endpoint id, create or adopt the netns and veth,
and hand the result to the agent, which attaches the programs and writes the endpoint and its
policy before the workload starts. ``remove`` is CNI DEL. In local mode a :class:`PodRunner` runs
the pod's first container. Blocking netlink work runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemesh.netns import host_ifname, netns_name
from services.datapath.pods.ipam import Ipam
from services.datapath.pods.netns import PodLink, create_pod_netns, delete_pod_netns
from services.datapath.pods.resolvconf import PodDns
from services.datapath.pods.runner import PodRunner

__all__ = ["PodEndpoint", "PodManager", "on_node"]

log = logging.getLogger("nodemesh.datapath.pods")


@dataclass
class PodEndpoint:
    key: str  # namespace/name
    namespace: str
    name: str
    uid: str
    ep_id: int
    link: PodLink
    pod: dict[str, Any]
    runner: PodRunner | None = None
    identity: int = 0
    container_id: str = ""  # Kubernetes mode: the sandbox the CNI plugin reported (services.datapath.cni)

    @property
    def ip(self) -> str:
        return self.link.ip


def on_node(pod: dict[str, Any], node: str) -> bool:
    spec = pod.get("spec") if isinstance(pod, dict) else None
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(spec, dict) or not isinstance(meta, dict) or not meta.get("name"):
        return False  # malformed: not something this node can plumb
    return spec.get("nodeName") == node and not spec.get("hostNetwork")


StatusReport = Callable[[PodEndpoint, dict[str, Any]], Awaitable[None]]
EndpointHook = Callable[[PodEndpoint], Awaitable[None]]
StartGate = Callable[[PodEndpoint], Awaitable[dict[str, str]]]


class PodManager:
    def __init__(
        self,
        node: str,
        ipam: Ipam,
        log_dir: Path,
        *,
        on_added: EndpointHook,
        on_removed: EndpointHook,
        report: StatusReport,
        run_containers: bool = True,
        scope: str = "",
        host_src: str = "",
        dns: PodDns | None = None,
        gate: StartGate | None = None,
    ) -> None:
        self.node = node
        self.gate = gate
        self.scope = scope
        self.host_src = host_src
        self.dns = dns
        self.ipam = ipam
        self.log_dir = log_dir
        self.on_added = on_added
        self.on_removed = on_removed
        self.report = report
        self.run_containers = run_containers
        self.endpoints: dict[str, PodEndpoint] = {}
        self._lock = asyncio.Lock()

    def names(self, namespace: str, name: str) -> tuple[str, str]:
        return (
            netns_name(self.node, namespace, name, self.scope),
            host_ifname(self.node, namespace, name, self.scope),
        )

    async def add(self, pod: dict[str, Any]) -> PodEndpoint | None:
        meta = pod.get("metadata") or {}
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        key = f"{ns}/{name}"
        async with self._lock:
            ep = self.endpoints.get(key)
            if ep is not None and ep.uid == str(meta.get("uid", "")):
                ep.pod = pod
                return ep
            if ep is not None:  # same name, new object: a recreated pod gets a fresh endpoint
                await self._remove_locked(key)
            alloc = self.ipam.allocate(key)
            nsname, ifname = self.names(ns, name)
            try:
                link = await asyncio.to_thread(create_pod_netns, nsname, ifname, alloc.ip, self.host_src)
            except BaseException:
                # never leave a half-made netns or a leaked address behind (the next reconcile retries)
                await asyncio.to_thread(delete_pod_netns, nsname, ifname)
                self.ipam.release(key)
                raise
            ep = PodEndpoint(key, ns, name, str(meta.get("uid", "")), alloc.ep_id, link, pod)
            self.endpoints[key] = ep
            try:
                await self.on_added(ep)  # programs attached, endpoint and policy written: now it may talk
            except BaseException:
                # roll back: a half-made endpoint must not linger (the next reconcile retries)
                self.endpoints.pop(key, None)
                await self.on_removed(ep)
                await asyncio.to_thread(delete_pod_netns, nsname, ifname)
                self.ipam.release(key)
                raise
            if self.run_containers:

                async def report(status: dict[str, Any], ep: PodEndpoint = ep) -> None:
                    await self.report(ep, status)

                async def gate(ep: PodEndpoint = ep) -> dict[str, str]:
                    assert self.gate is not None
                    return await self.gate(ep)

                ep.runner = PodRunner(
                    pod, nsname, alloc.ip, self.node, self.log_dir, report, self.dns,
                    gate if self.gate is not None else None,
                )  # fmt: skip
                ep.runner.start()
            log.info("pod endpoint up", extra={"pod": key, "ip": alloc.ip, "ep_id": alloc.ep_id})
            return ep

    async def remove(self, namespace: str, name: str) -> None:
        async with self._lock:
            await self._remove_locked(f"{namespace}/{name}")

    async def _remove_locked(self, key: str) -> None:
        ep = self.endpoints.pop(key, None)
        if ep is None:
            return
        if ep.runner is not None:
            await ep.runner.stop()
        await self.on_removed(ep)
        await asyncio.to_thread(delete_pod_netns, ep.link.netns, ep.link.host_ifname)
        self.ipam.release(key)
        log.info("pod endpoint removed", extra={"pod": key})

    async def gc(self, live: set[str]) -> None:
        """Remove allocations (and their netns) of pods that no longer exist (after a restart)."""
        for key in list(self.ipam.allocs):
            if key in live or key in self.endpoints:
                continue
            ns, _, name = key.partition("/")
            nsname, ifname = self.names(ns, name)
            await asyncio.to_thread(delete_pod_netns, nsname, ifname)
            self.ipam.release(key)
            log.info("stale pod endpoint collected", extra={"pod": key})

    async def stop(self) -> None:
        """Agent shutdown: workloads, netns and veths stay; a restarted agent adopts them."""
        for ep in self.endpoints.values():
            if ep.runner is not None:
                await ep.runner.detach()
