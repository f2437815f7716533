"""What the node's CNI-reported endpoints are, persisted so a restarted datapath finds them again.

``<data-dir>/cni-endpoints.json`` (atomic rename) maps container id → :class:`CniRecord`: the pod, its
veth (host name and ifindex), its address and its endpoint id. Standalone endpoints also take their
address from here (the node's pod CIDR, ``.1`` kept free as in local mode's IPAM). A corrupt file is
moved aside; the endpoints it described are then unknown until their pods are re-added.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import msgspec

from nodemesh.messages.cni import CniMode

__all__ = ["CniRecord", "CniStore", "StoreFull"]

log = logging.getLogger("nodemesh.datapath.cni")
MAX_EP_ID = 65535


class StoreFull(Exception):
    """No free address in the pod CIDR, or no free endpoint id."""


class CniRecord(msgspec.Struct, kw_only=True, frozen=True):
    container_id: str
    mode: CniMode
    namespace: str
    name: str
    uid: str = ""
    netns: str = ""
    ifname: str = "eth0"
    host_ifname: str
    host_ifindex: int = 0
    ip: str
    ep_id: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class _File(msgspec.Struct, kw_only=True):
    endpoints: list[CniRecord] = []


class CniStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, CniRecord] = {}
        try:
            data = msgspec.json.decode(path.read_bytes(), type=_File)
            self.records = {r.container_id: r for r in data.endpoints}
        except FileNotFoundError:
            pass
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("corrupt CNI endpoint state moved aside", extra={"path": str(path), "error": str(e)})
            os.replace(path, path.with_suffix(".corrupt"))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = _File(endpoints=sorted(self.records.values(), key=lambda r: r.container_id))
        tmp.write_bytes(msgspec.json.encode(body))
        os.replace(tmp, self.path)

    def put(self, rec: CniRecord) -> None:
        self.records[rec.container_id] = rec
        self._save()

    def remove(self, container_id: str) -> None:
        if self.records.pop(container_id, None) is not None:
            self._save()

    def by_key(self, key: str) -> list[CniRecord]:
        return [r for r in self.records.values() if r.key == key]

    def next_ep_id(self, taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        used = {r.ep_id for r in self.records.values()} | taken
        ep_id = next((i for i in range(1, MAX_EP_ID + 1) if i not in used), None)
        if ep_id is None:
            raise StoreFull("no free endpoint id")
        return ep_id

    def next_ip(self, cidr: str) -> str:
        net = ipaddress.IPv4Network(cidr, strict=False)
        used = {r.ip for r in self.records.values()}
        hosts = net.hosts()
        next(hosts, None)  # .1: the node's router address, never a pod's
        ip = next((str(h) for h in hosts if str(h) not in used), None)
        if ip is None:
            raise StoreFull(f"pod CIDR {net} is full")
        return ip
