"""Kubernetes objects → what the ipcache and the nodes bucket should hold (pure; no I/O).

A pod is an endpoint once it is scheduled (``spec.nodeName``), has an IP (``status.podIP(s)``), is
not ``hostNetwork`` (those pods are the node itself: the node's entry covers them) and has not
finished (phase Succeeded/Failed release their IP). A node contributes one ipcache entry per
InternalIP with the reserved identity ``remote-node`` (6); consumers map their own node's address
to ``host`` (1) themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodemesh.labels import REMOTE_NODE, endpoint_key
from nodemesh.messages.identity import IPCacheEntry, NodeInfo

__all__ = ["PodEndpoint", "entry", "node_entries", "node_info", "owner_of", "pod_endpoint"]

Owner = tuple[str, str, str]  # ("pod", namespace, name) | ("node", "", name)


@dataclass(frozen=True)
class PodEndpoint:
    node: str
    namespace: str
    name: str
    ips: tuple[str, ...]

    @property
    def ref(self) -> str:
        return endpoint_key(self.node, self.namespace, self.name)


def _valid_ip(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def pod_endpoint(pod: Mapping[str, Any]) -> PodEndpoint | None:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node = spec.get("nodeName")
    if not node or spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    ips: list[str] = []
    for item in [{"ip": status.get("podIP")}, *(status.get("podIPs") or [])]:
        ip = _valid_ip(item.get("ip") if isinstance(item, dict) else None)
        if ip and ip not in ips:
            ips.append(ip)
    if not ips:
        return None
    return PodEndpoint(
        str(node), str(meta.get("namespace") or "default"), str(meta.get("name") or ""), tuple(ips)
    )


def _internal_ips(node: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for addr in (node.get("status") or {}).get("addresses") or []:
        if isinstance(addr, dict) and addr.get("type") == "InternalIP":
            ip = _valid_ip(addr.get("address"))
            if ip and ip not in out:
                out.append(ip)
    return out


def node_info(node: Mapping[str, Any]) -> NodeInfo | None:
    meta = node.get("metadata") or {}
    ips = _internal_ips(node)
    if not meta.get("name") or not ips:
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    return NodeInfo(
        name=str(meta["name"]),
        address=ips[0],
        pod_cidr=str((node.get("spec") or {}).get("podCIDR") or ""),
        labels=labels,
    )


def node_entries(node: Mapping[str, Any]) -> list[IPCacheEntry]:
    name = str((node.get("metadata") or {}).get("name") or "")
    return [entry(ip, REMOTE_NODE, node=name) for ip in _internal_ips(node)] if name else []


def entry(ip: str, identity: int, *, node: str = "", namespace: str = "", pod: str = "") -> IPCacheEntry:
    """A host entry (/32, or /128 for IPv6)."""
    plen = 128 if ":" in ip else 32
    return IPCacheEntry(ip=ip, identity=identity, node=node, namespace=namespace, pod=pod, prefix_len=plen)


def owner_of(entry: IPCacheEntry) -> Owner:
    """Who put an ipcache entry there: a pod, or a node (entries without a pod)."""
    if entry.pod:
        return ("pod", entry.namespace, entry.pod)
    return ("node", "", entry.node)
