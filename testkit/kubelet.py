"""A kubelet without containers: run this node's pods the way Kubernetes would, network-wise.

For every Pod the API server has scheduled to ``node`` (not ``hostNetwork``), like the kubelet and
containerd's CRI plugin do for a pod sandbox: create a network namespace ``/run/netns/cni-<uuid>``
(loopback up), invoke the node's CNI configuration list through :class:`~testkit.cniruntime.CniRuntime`
(real plugin executables, env vars, stdin config, result parsing), take the pod IP from the result and
write it to the Pod's status (``phase: Running``, ``podIP(s)``, ``hostIP``, ``Ready``) through the
API server. A Pod that disappears gets CNI DEL and its namespace removed. A failed ADD is retried on
the next sync, as the kubelet retries sandbox creation; its error is kept in :attr:`errors`.
Workload processes are not started: tests talk from inside the namespaces themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from pyroute2 import IPRoute, netns

from nodemesh.netns import netns_path
from testkit.cniruntime import CniPluginError, CniRuntime, PodRef, pod_ipv4

__all__ = ["Kubelet", "Sandbox"]

log = logging.getLogger("testkit.kubelet")


@dataclass
class Sandbox:
    ref: PodRef
    netns_name: str
    ip: str
    result: dict[str, Any]

    @property
    def netns(self) -> str:
        """The namespace's path (what testkit.podnet and netns_socket accept)."""
        return self.ref.netns


def _create_netns(name: str) -> None:
    netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _remove_netns(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.remove(name)


class Kubelet:
    def __init__(self, node: str, node_ip: str, api_url: str, runtime: CniRuntime) -> None:
        self.node = node
        self.node_ip = node_ip
        self.api_url = api_url
        self.runtime = runtime
        self.sandboxes: dict[str, Sandbox] = {}  # namespace/name → sandbox
        self.errors: dict[str, CniPluginError] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Tear every sandbox down (CNI DEL, namespace removed), as a drained node would."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self.sandboxes):
            with contextlib.suppress(Exception):
                await self.remove(key)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("kubelet %s: sync failed", self.node)
            await asyncio.sleep(0.2)

    async def _pods(self) -> list[dict[str, Any]]:
        assert self._session is not None
        async with self._session.get(f"{self.api_url}/api/v1/pods") as r:
            r.raise_for_status()
            body = await r.json()
        return [
            p
            for p in body.get("items") or []
            if (p.get("spec") or {}).get("nodeName") == self.node
            and not (p.get("spec") or {}).get("hostNetwork")
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]

    async def sync(self) -> None:
        pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in await self._pods()}
        for key in [k for k in self.sandboxes if k not in pods]:
            await self.remove(key)
        for key, pod in pods.items():
            sb = self.sandboxes.get(key)
            if sb is not None and sb.ref.uid == pod["metadata"].get("uid", ""):
                continue
            if sb is not None:  # same name, new object
                await self.remove(key)
            await self._run(key, pod)

    async def _run(self, key: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        sandbox_id = uuid.uuid4().hex + uuid.uuid4().hex  # containerd: 64 hex
        name = f"cni-{uuid.uuid4()}"
        ref = PodRef(meta["namespace"], meta["name"], str(meta.get("uid", "")), sandbox_id, netns_path(name))
        await asyncio.to_thread(_create_netns, name)
        try:
            result = await asyncio.to_thread(self.runtime.add, ref)
        except CniPluginError as e:
            self.errors[key] = e
            log.warning("kubelet %s: sandbox for %s failed: %s", self.node, key, e)
            # containerd tears a failed sandbox down: DEL the chain, remove the namespace
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.runtime.delete, ref)
            await asyncio.to_thread(_remove_netns, name)
            return
        except BaseException:
            await asyncio.to_thread(_remove_netns, name)
            raise
        self.errors.pop(key, None)
        sb = Sandbox(ref, name, pod_ipv4(result), result)
        self.sandboxes[key] = sb
        await self._report(pod, sb)

    async def remove(self, key: str) -> None:
        sb = self.sandboxes.pop(key)
        try:
            await asyncio.to_thread(self.runtime.delete, sb.ref)
        finally:
            await asyncio.to_thread(_remove_netns, sb.netns_name)

    async def _report(self, pod: dict[str, Any], sb: Sandbox) -> None:
        assert self._session is not None
        meta = pod["metadata"]
        ready = [
            {"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {
            "phase": "Running",
            "podIP": sb.ip,
            "podIPs": [{"ip": sb.ip}],
            "hostIP": self.node_ip,
            "conditions": ready,
        }
        url = f"{self.api_url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {"metadata": {"uid": meta.get("uid")}, "status": status}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._session.patch(url, json=body, headers=headers) as r:
            r.raise_for_status()
