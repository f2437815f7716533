"""IPv4 addresses and endpoint ids for this node's pods, persisted so a restart keeps them.

State lives in ``<data-dir>/ipam.json`` (written atomically: temp file + rename). The first and
the last address of the pod CIDR are never handed out; ``.1`` is kept free too (a gateway address
in Kubernetes' habit). A corrupt file is moved aside and the allocator starts empty: addresses of
pods that still run are re-claimed from their netns by the pod manager.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

__all__ = ["Allocation", "Ipam", "IpamExhausted"]

log = logging.getLogger("nodemesh.datapath.ipam")
MAX_EP_ID = 65535


class IpamExhausted(Exception):
    """No free address (or endpoint id) left."""


class Allocation:
    __slots__ = ("ep_id", "ip", "key")

    def __init__(self, key: str, ip: str, ep_id: int) -> None:
        self.key, self.ip, self.ep_id = key, ip, ep_id

    def to_json(self) -> dict[str, object]:
        return {"ip": self.ip, "ep_id": self.ep_id}


class Ipam:
    """Pod key (``namespace/name``) → address and endpoint id, from one pod CIDR."""

    def __init__(self, path: Path, cidr: str) -> None:
        self.path = path
        self.net = ipaddress.IPv4Network(cidr, strict=False)
        self.allocs: dict[str, Allocation] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("cidr") != str(self.net):
                log.warning(
                    "pod CIDR changed, starting a new allocation table", extra={"old": raw.get("cidr")}
                )
                return
            for key, v in raw.get("pods", {}).items():
                ip = str(ipaddress.IPv4Address(v["ip"]))
                if ipaddress.IPv4Address(ip) in self.net:
                    self.allocs[key] = Allocation(key, ip, int(v["ep_id"]))
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            bad = self.path.with_suffix(".corrupt")
            log.error("corrupt IPAM state moved aside", extra={"path": str(self.path), "error": str(e)})
            os.replace(self.path, bad)
            self.allocs = {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"cidr": str(self.net), "pods": {k: a.to_json() for k, a in sorted(self.allocs.items())}}
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)

    def get(self, key: str) -> Allocation | None:
        return self.allocs.get(key)

    def allocate(self, key: str) -> Allocation:
        """The pod's allocation (the same one again for a known pod)."""
        if key in self.allocs:
            return self.allocs[key]
        used_ips = {a.ip for a in self.allocs.values()}
        used_ids = {a.ep_id for a in self.allocs.values()}
        hosts = list(self.net.hosts())[1:]  # skip .1
        ip = next((str(h) for h in hosts if str(h) not in used_ips), None)
        ep_id = next((i for i in range(1, MAX_EP_ID + 1) if i not in used_ids), None)
        if ip is None or ep_id is None:
            raise IpamExhausted(f"pod CIDR {self.net} is full")
        a = Allocation(key, ip, ep_id)
        self.allocs[key] = a
        self._save()
        return a

    def release(self, key: str) -> None:
        if self.allocs.pop(key, None) is not None:
            self._save()
