"""Kubernetes mode: the endpoints of this node are exactly the pods the CNI plugin reports.

ADD registers a pod's veth (chained: the one another plugin made, with the address the cluster
assigned; standalone: one made here into the runtime's netns, address from the node's pod CIDR) and
answers only after the agent wrote the endpoint's policy and endpoint entry and attached the
programs. Nothing here creates a network namespace. DEL is idempotent. The Pod object (labels) comes
from the K8S stream; ADD waits for it, as the kubelet only runs pods the API server has.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodemesh.messages.cni import (
    CNI_ERR_INVALID_CONFIG,
    CNI_ERR_TRY_AGAIN,
    CNI_ERR_UNKNOWN_CONTAINER,
    EndpointReply,
    EndpointRequest,
)
from nodemesh.netns import cni_host_ifname
from services.datapath.cni.store import CniRecord, CniStore, StoreFull
from services.datapath.pods.manager import PodEndpoint
from services.datapath.pods.netns import GATEWAY, PodLink, plumb_veth

if TYPE_CHECKING:
    from services.datapath.agent import Agent

__all__ = ["CniHandler"]

log = logging.getLogger("nodemesh.datapath.cni")


def _fail(code: int, msg: str, details: str = "") -> EndpointReply:
    return EndpointReply(ok=False, code=code, msg=msg, details=details)


def _host_link(ifindex: int) -> tuple[str, str, str] | None:
    """(name, kind, mac) of a host link, or None."""
    with IPRoute() as ipr:
        try:
            link = ipr.get_links(ifindex)[0]
        except NetlinkError:
            return None
        info = link.get_attr("IFLA_LINKINFO")
        kind = str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
        return str(link.get_attr("IFLA_IFNAME")), kind, str(link.get_attr("IFLA_ADDRESS"))


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise


class CniHandler:
    def __init__(self, agent: Agent, state: Path, pod_wait: float = 30.0) -> None:
        self.agent = agent
        self.store = CniStore(state)
        self.pod_wait = pod_wait
        self.ready = asyncio.Event()
        """Set once the agent is synced and the previous run's endpoints are restored."""
        self._lock = asyncio.Lock()

    # --- restart --------------------------------------------------------------------------------
    async def restore(self) -> None:
        """Before the first reconcile: take back the endpoints whose veth still exists (re-attach,
        rewrite), forget those whose veth went while the agent was down (DEL with the datapath down).
        Under the lock: a DEL arriving meanwhile waits, so it never races a record being taken back."""
        async with self._lock:
            await self._restore()

    async def _restore(self) -> None:
        for rec in list(self.store.records.values()):
            link = await asyncio.to_thread(_host_link, rec.host_ifindex)
            if link is None or link[0] != rec.host_ifname:
                log.info("CNI endpoint gone while the agent was down", extra={"pod": rec.key})
                self.store.remove(rec.container_id)
                continue
            pod = self._pod(rec.namespace, rec.name, rec.uid) or _stub_pod(rec)
            ep = self._endpoint(rec, pod, link[2])
            self.agent.cni_endpoints[rec.key] = ep
            await self.agent.endpoint_added(ep)

    # --- requests -------------------------------------------------------------------------------
    async def handle(self, req: EndpointRequest) -> EndpointReply:
        if req.command != "DEL":
            try:
                await asyncio.wait_for(self.ready.wait(), self.pod_wait)
            except TimeoutError:
                return _fail(CNI_ERR_TRY_AGAIN, "the nodemesh datapath is not synced yet")
        async with self._lock:
            if req.command == "ADD":
                return await self._add(req)
            if req.command == "DEL":
                return await self._del(req)
            return await self._check(req)

    def _pod(self, ns: str, name: str, uid: str) -> dict[str, Any] | None:
        pod: dict[str, Any] | None = self.agent.k8s.get("Pod", ns, name) if self.agent.k8s else None
        if pod is None or (uid and str((pod.get("metadata") or {}).get("uid", "")) != uid):
            return None
        return pod

    def _endpoint(self, rec: CniRecord, pod: dict[str, Any], host_mac: str, pod_mac: str = "") -> PodEndpoint:
        link = PodLink(rec.netns, rec.host_ifname, rec.host_ifindex, host_mac, pod_mac, rec.ip)
        ep = PodEndpoint(rec.key, rec.namespace, rec.name, rec.uid, rec.ep_id, link, pod)
        ep.container_id = rec.container_id
        return ep

    async def _add(self, req: EndpointRequest) -> EndpointReply:
        if not req.pod_namespace or not req.pod_name:
            return _fail(
                CNI_ERR_INVALID_CONFIG, "CNI_ARGS must name the pod (K8S_POD_NAMESPACE, K8S_POD_NAME)"
            )
        if not req.netns.startswith("/"):
            return _fail(CNI_ERR_INVALID_CONFIG, "CNI_NETNS must be a path")
        old = self.store.records.get(req.container_id)
        if old is not None and old.key in self.agent.cni_endpoints:  # ADD again: the same answer
            ep = self.agent.cni_endpoints[old.key]
            return self._ok(old, ep.link)
        pod = await self._wait_pod(req)
        if pod is None:
            return _fail(
                CNI_ERR_TRY_AGAIN,
                f"pod {req.pod_namespace}/{req.pod_name} is not known to this node's datapath yet",
            )
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node != self.agent.node:
            return _fail(
                CNI_ERR_INVALID_CONFIG, f"pod is scheduled to {node or 'no node'}, not {self.agent.node}"
            )
        key = f"{req.pod_namespace}/{req.pod_name}"
        for stale in self.store.by_key(key):  # an earlier sandbox of the same pod: it is gone
            await self._remove(stale)
        try:
            ep_id = self.store.next_ep_id()
            if req.mode == "chained":
                rec, link = await self._chained(req, ep_id)
            else:
                rec, link = await self._standalone(req, ep_id)
        except StoreFull as e:
            return _fail(CNI_ERR_TRY_AGAIN, str(e))
        except ValueError as e:
            return _fail(CNI_ERR_INVALID_CONFIG, str(e))
        self.store.put(rec)  # before anything is written: a crash from here on is cleaned up on restart
        ep = self._endpoint(rec, pod, link.host_mac, link.pod_mac)
        self.agent.cni_endpoints[key] = ep
        try:
            await self.agent.endpoint_added(ep)  # policy, endpoint entry, programs: then it may talk
        except BaseException:
            await self._remove(rec)
            raise
        log.info("CNI endpoint up", extra={"pod": key, "ip": rec.ip, "ep_id": ep_id, "mode": rec.mode})
        return self._ok(rec, link)

    async def _wait_pod(self, req: EndpointRequest) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pod_wait
        while (pod := self._pod(req.pod_namespace, req.pod_name, req.pod_uid)) is None:
            if loop.time() > deadline:
                return None
            await asyncio.sleep(0.1)
        return pod

    async def _chained(self, req: EndpointRequest, ep_id: int) -> tuple[CniRecord, PodLink]:
        ip = str(ipaddress.IPv4Address(req.ip))  # ValueError → invalid config
        link = await asyncio.to_thread(_host_link, req.host_ifindex)
        if link is None or link[0] != req.host_ifname:
            raise ValueError(f"host link {req.host_ifname} (ifindex {req.host_ifindex}) does not exist")
        if link[1] != "veth":
            raise ValueError(
                f"host link {req.host_ifname} is a {link[1] or 'device of unknown kind'}, not a veth"
            )
        rec = CniRecord(
            container_id=req.container_id, mode="chained", namespace=req.pod_namespace, name=req.pod_name,
            uid=req.pod_uid, netns=req.netns, ifname=req.ifname, host_ifname=req.host_ifname,
            host_ifindex=req.host_ifindex, ip=ip, ep_id=ep_id,
        )  # fmt: skip
        return rec, PodLink(req.netns, req.host_ifname, req.host_ifindex, link[2], "", ip)

    async def _standalone(self, req: EndpointRequest, ep_id: int) -> tuple[CniRecord, PodLink]:
        if not self.agent.pod_cidr:
            raise StoreFull(f"node {self.agent.node} has no pod CIDR yet")
        ip = self.store.next_ip(self.agent.pod_cidr)
        host_if = cni_host_ifname(req.container_id)
        try:
            link = await asyncio.to_thread(plumb_veth, req.netns, host_if, ip, "", req.ifname)
        except BaseException:
            await asyncio.to_thread(_delete_link, host_if)
            raise
        rec = CniRecord(
            container_id=req.container_id, mode="standalone", namespace=req.pod_namespace, name=req.pod_name,
            uid=req.pod_uid, netns=req.netns, ifname=req.ifname, host_ifname=host_if,
            host_ifindex=link.host_ifindex, ip=ip, ep_id=ep_id,
        )  # fmt: skip
        return rec, link

    def _ok(self, rec: CniRecord, link: PodLink) -> EndpointReply:
        gateway = GATEWAY if rec.mode == "standalone" else ""
        return EndpointReply(
            ok=True, ip=rec.ip, gateway=gateway, host_ifname=rec.host_ifname, host_mac=link.host_mac,
            pod_mac=link.pod_mac, endpoint_id=rec.ep_id,
        )  # fmt: skip

    async def _remove(self, rec: CniRecord) -> None:
        ep = self.agent.cni_endpoints.get(rec.key)
        if ep is not None and ep.container_id == rec.container_id:
            del self.agent.cni_endpoints[rec.key]
            await self.agent.endpoint_removed(ep)
        elif self.agent.maps is not None:
            self.agent.maps.del_endpoint(rec.host_ifindex)
        if rec.mode == "standalone":
            await asyncio.to_thread(_delete_link, rec.host_ifname)
        self.store.remove(rec.container_id)

    async def _del(self, req: EndpointRequest) -> EndpointReply:
        rec = self.store.records.get(req.container_id)
        if rec is not None:
            await self._remove(rec)
            log.info("CNI endpoint removed", extra={"pod": rec.key})
        else:  # unknown (a second DEL, or an ADD that never reached us): nothing of ours may linger
            await asyncio.to_thread(_delete_link, cni_host_ifname(req.container_id))
        return EndpointReply(ok=True)

    async def _check(self, req: EndpointRequest) -> EndpointReply:
        rec = self.store.records.get(req.container_id)
        if rec is None or rec.key not in self.agent.cni_endpoints:
            return _fail(CNI_ERR_UNKNOWN_CONTAINER, f"container {req.container_id} has no nodemesh endpoint")
        if (req.host_ifindex, req.ip) != (rec.host_ifindex, rec.ip):
            was = f"{rec.host_ifname}/{rec.host_ifindex} {rec.ip}"
            now = f"{req.host_ifname}/{req.host_ifindex} {req.ip}"
            return _fail(100, "the pod's veth or address changed since ADD", f"ADD: {was}; now: {now}")
        maps = self.agent.maps
        if maps is None or rec.host_ifindex not in dict(maps.endpoint_items()):
            return _fail(100, f"no endpoint entry for {rec.host_ifname} in the datapath's map")
        return EndpointReply(ok=True, ip=rec.ip, host_ifname=rec.host_ifname, endpoint_id=rec.ep_id)


def _stub_pod(rec: CniRecord) -> dict[str, Any]:
    """A pod whose object is gone from the API but whose veth still exists keeps being enforced
    (as one selected by namespace-wide policies) until its DEL."""
    return {"metadata": {"namespace": rec.namespace, "name": rec.name, "uid": rec.uid}, "spec": {}}
