"""LB-IPAM: LoadBalancer Services get ``status.loadBalancer.ingress[0].ip`` from a loopback pool.

Allocation is derived from the Services themselves (the address lives in their persisted status),
so it is stable across restarts and released when the Service is deleted or stops being a
LoadBalancer. A requested address (``spec.loadBalancerIP`` or Cilium's ``lbipam.cilium.io/ips``
annotation) is honoured when it is in the pool and free; otherwise the lowest free address is used.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from localcluster.apiserver.controllers.util import as_map, set_status
from localcluster.apiserver.store import Store

__all__ = ["IPS_ANNOTATION", "LbIpam"]

log = logging.getLogger("localcluster.apiserver.lbipam")
IPS_ANNOTATION = "lbipam.cilium.io/ips"


def _ingress_ip(svc: dict[str, Any]) -> str:
    ingress = (as_map(svc.get("status")).get("loadBalancer") or {}).get("ingress") or []
    return str(ingress[0].get("ip", "")) if ingress and isinstance(ingress[0], dict) else ""


def _requested(svc: dict[str, Any]) -> list[str]:
    out = []
    ann = (svc["metadata"].get("annotations") or {}).get(IPS_ANNOTATION, "")
    out += [a.strip() for a in ann.split(",") if a.strip()]
    lb_ip = as_map(svc.get("spec")).get("loadBalancerIP")
    if lb_ip:
        out.append(str(lb_ip))
    return out


class LbIpam:
    def __init__(self, pool: str) -> None:
        self.pool = ipaddress.ip_network(pool, strict=False)
        # Network and broadcast addresses are skipped, as Cilium's allowFirstLastIPs=No does.
        self._hosts = (
            [str(a) for a in self.pool.hosts()]
            if self.pool.num_addresses > 2
            else [str(a) for a in self.pool]
        )
        self._in_pool = set(self._hosts)

    def reconcile(self, store: Store) -> int:
        writes = 0
        services = sorted(
            store.objects("Service"),
            key=lambda s: (
                s["metadata"]["creationTimestamp"],
                s["metadata"]["namespace"],
                s["metadata"]["name"],
            ),
        )
        used: set[str] = set()
        pending: list[dict[str, Any]] = []
        for svc in services:
            is_lb = as_map(svc.get("spec")).get("type") == "LoadBalancer"
            ip = _ingress_ip(svc)
            if not is_lb:
                if ip and ip in self._in_pool:
                    writes += set_status(store, svc, {"loadBalancer": {}})
                continue
            wanted = [a for a in _requested(svc) if a in self._in_pool]
            if ip and ip in self._in_pool and ip not in used and (not wanted or ip in wanted):
                used.add(ip)
            else:
                pending.append(svc)
        for svc in pending:
            choice = next((a for a in _requested(svc) if a in self._in_pool and a not in used), None)
            current = _ingress_ip(svc)
            if choice is None and current in self._in_pool and current not in used:
                choice = current  # the requested address is taken: keep what it has
            if choice is None:
                choice = next((a for a in self._hosts if a not in used), None)
            if choice is None:
                log.warning(
                    "LB pool %s exhausted: %s/%s gets no address",
                    self.pool,
                    svc["metadata"]["namespace"],
                    svc["metadata"]["name"],
                )
                continue
            used.add(choice)
            writes += set_status(store, svc, {"loadBalancer": {"ingress": [{"ip": choice, "ipMode": "VIP"}]}})
        return writes
