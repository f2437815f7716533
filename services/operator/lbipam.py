"""LB-IPAM: LoadBalancer Services get addresses from CiliumLoadBalancerIPPools, with Cilium's rules.

- A pool (``cilium.io/v2alpha1``, cluster-scoped) has ``blocks`` (``cidr``, or ``start``/``stop``), an
  optional ``serviceSelector`` (a label selector over the Service's labels plus the pseudo-labels
  ``io.kubernetes.service.namespace`` and ``io.kubernetes.service.name``), ``disabled`` (no new
  allocations; addresses already given stay) and ``allowFirstLastIPs`` (``No`` by default: a CIDR's
  first and last address are not given out, unless the CIDR has at most two).
- A pool whose blocks overlap an older pool's is in conflict (``cilium.io/PoolConflict`` True) and
  gives out nothing until the overlap is gone (pools created in the same second: by name). Every
  pool carries ``cilium.io/IPsTotal``, ``IPsAvailable`` and ``IPsUsed`` (the count in the message,
  as Cilium reports them).
- Services of type LoadBalancer without a ``loadBalancerClass`` (or with one of Cilium's) are served
  oldest first. A Service keeps its address while a pool it matches contains it; a requested address
  (``lbipam.cilium.io/ips``, comma-separated, or ``spec.loadBalancerIP``) is given only if a matching
  pool holds it and it is free — otherwise the Service gets none; without a request, the lowest free
  address of the oldest matching pool. The outcome is the Service's ``cilium.io/IPAMRequestSatisfied``
  condition (reasons ``satisfied``, ``no_pool``, ``out_of_ips``, ``already_allocated``).
- Allocation is derived from the Services' persisted status, so it is stable across restarts and an
  address is free again when its Service goes or stops being a LoadBalancer.

Pure: ``lbipam_writes(pools, services, now)`` returns the status writes; I/O is the caller's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nodemesh.messages.k8s import ObjectWrite
from services.operator.objects import FIELD_MANAGER, as_list, as_map, creation_key

__all__ = [
    "CONFLICT",
    "IPS_ANNOTATION",
    "POOL_API_VERSION",
    "SATISFIED",
    "lbipam_writes",
    "selector_matches",
]

IPS_ANNOTATION = "lbipam.cilium.io/ips"
POOL_API_VERSION = "cilium.io/v2alpha1"
SATISFIED = "cilium.io/IPAMRequestSatisfied"
CONFLICT = "cilium.io/PoolConflict"
OUR_CLASSES = (None, "", "io.cilium/l2-announcer", "io.cilium/bgp-control-plane")
NS_LABEL = "io.kubernetes.service.namespace"
NAME_LABEL = "io.kubernetes.service.name"


def selector_matches(selector: Any, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector; None/absent matches everything, a malformed one nothing."""
    if selector is None:
        return True
    if not isinstance(selector, dict):
        return False
    for k, v in as_map(selector.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for expr in as_list(selector.get("matchExpressions")):
        if not isinstance(expr, dict):
            return False
        key, op, values = expr.get("key"), expr.get("operator"), as_list(expr.get("values"))
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            return False
        if not ok:
            return False
    return True


@dataclass
class _Pool:
    obj: dict[str, Any]
    name: str
    ranges: list[tuple[int, int]]  # inclusive, allocatable addresses
    spans: list[tuple[int, int]]  # inclusive, whole blocks (for overlap)
    bad: list[str] = field(default_factory=list)
    conflict_with: str = ""
    used: int = 0

    @property
    def disabled(self) -> bool:
        return as_map(self.obj.get("spec")).get("disabled") is True

    @property
    def total(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def contains(self, ip: int) -> bool:
        return any(a <= ip <= b for a, b in self.ranges)

    def addresses(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b + 1)


def _parse_pool(obj: dict[str, Any]) -> _Pool:
    spec = as_map(obj.get("spec"))
    first_last = str(spec.get("allowFirstLastIPs", "No")) == "Yes"
    pool = _Pool(obj, str(as_map(obj.get("metadata")).get("name", "")), [], [])
    for blk in as_list(spec.get("blocks")):
        b = as_map(blk)
        try:
            if b.get("cidr"):
                net = ipaddress.ip_network(str(b["cidr"]), strict=False)
                if net.version != 4:
                    raise ValueError("IPv4 only")
                lo, hi = int(net.network_address), int(net.broadcast_address)
                pool.spans.append((lo, hi))
                if not first_last and net.num_addresses > 2:
                    lo, hi = lo + 1, hi - 1
                pool.ranges.append((lo, hi))
            elif b.get("start"):
                lo = int(ipaddress.IPv4Address(str(b["start"])))
                hi = int(ipaddress.IPv4Address(str(b.get("stop") or b["start"])))
                if hi < lo:
                    raise ValueError("stop before start")
                pool.spans.append((lo, hi))
                pool.ranges.append((lo, hi))
            else:
                raise ValueError("neither cidr nor start")
        except (ValueError, TypeError) as e:
            pool.bad.append(f"{blk!r}: {e}")
    return pool


def _ip(svc: dict[str, Any]) -> str:
    ingress = as_list(as_map(as_map(svc.get("status")).get("loadBalancer")).get("ingress"))
    return str(ingress[0].get("ip", "")) if ingress and isinstance(ingress[0], dict) else ""


def _requested(svc: dict[str, Any]) -> list[str]:
    ann = str(as_map(as_map(svc.get("metadata")).get("annotations")).get(IPS_ANNOTATION, ""))
    out = [a.strip() for a in ann.split(",") if a.strip()]
    lb_ip = as_map(svc.get("spec")).get("loadBalancerIP")
    if lb_ip:
        out.append(str(lb_ip))
    return out


def _to_int(ip: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return None


def _condition(typ: str, status: str, reason: str, message: str, old: list[Any], now: str) -> dict[str, Any]:
    prev = next((c for c in old if isinstance(c, dict) and c.get("type") == typ), None)
    same = prev is not None and prev.get("status") == status
    when = str(prev.get("lastTransitionTime", now)) if same and prev is not None else now
    return {"type": typ, "status": status, "reason": reason, "message": message, "lastTransitionTime": when}


def _merge_conditions(old: list[Any], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    types = {c["type"] for c in new}
    return [c for c in old if isinstance(c, dict) and c.get("type") not in types] + new


def _strip_times(conds: list[Any]) -> list[Any]:
    return [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c for c in conds
    ]


def _status_write(
    kind: str, api_version: str, obj: dict[str, Any], status: dict[str, Any]
) -> ObjectWrite | None:
    """A status write if ``status`` changes anything (times of unchanged conditions aside)."""
    cur = as_map(obj.get("status"))
    changed = False
    for k, v in status.items():
        have = cur.get(k)
        if k == "conditions":
            if _strip_times(as_list(have)) != _strip_times(v):
                changed = True
        elif (have or {}) != v:
            changed = True
    if not changed:
        return None
    m = as_map(obj.get("metadata"))
    if status.get("loadBalancer") == {}:
        # A merge patch merges maps: only an explicit null removes the address.
        status = {**status, "loadBalancer": {"ingress": None}}
    return ObjectWrite(
        op="status",
        kind=kind,
        api_version=api_version,
        namespace=str(m.get("namespace", "")),
        name=str(m.get("name", "")),
        obj={"status": status},
        uid=str(m.get("uid", "")),
        field_manager=FIELD_MANAGER,
    )


def _labels(svc: dict[str, Any]) -> dict[str, str]:
    m = as_map(svc.get("metadata"))
    out = {str(k): str(v) for k, v in as_map(m.get("labels")).items()}
    out[NS_LABEL] = str(m.get("namespace", ""))
    out[NAME_LABEL] = str(m.get("name", ""))
    return out


def lbipam_writes(pools: list[dict[str, Any]], services: list[dict[str, Any]], now: str) -> list[ObjectWrite]:
    parsed = [_parse_pool(p) for p in sorted(pools, key=creation_key)]
    for i, p in enumerate(parsed):
        for older in parsed[:i]:
            if any(a <= d and c <= b for a, b in p.spans for c, d in older.spans):
                p.conflict_with = older.name
                break
    live = [p for p in parsed if not p.conflict_with]

    def matching(svc: dict[str, Any]) -> list[_Pool]:
        labels = _labels(svc)
        return [p for p in live if selector_matches(as_map(p.obj.get("spec")).get("serviceSelector"), labels)]

    writes: list[ObjectWrite] = []
    used: set[int] = set()
    pending: list[tuple[dict[str, Any], list[_Pool]]] = []
    kept: list[tuple[dict[str, Any], _Pool]] = []
    in_any = {p.name: p for p in parsed}
    for svc in sorted(services, key=creation_key):
        spec = as_map(svc.get("spec"))
        ip_s = _ip(svc)
        ip = _to_int(ip_s) if ip_s else None
        ours = spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") in OUR_CLASSES
        if not ours:
            if ip is not None and any(p.contains(ip) for p in in_any.values()):
                conds = [
                    c
                    for c in as_list(as_map(svc.get("status")).get("conditions"))
                    if as_map(c).get("type") != SATISFIED
                ]
                w = _status_write("Service", "v1", svc, {"loadBalancer": {}, "conditions": conds})
                if w is not None:
                    writes.append(w)
            continue
        cands = matching(svc)
        wanted = {w for w in (_to_int(a) for a in _requested(svc)) if w is not None}
        owner = next((p for p in cands if ip is not None and p.contains(ip)), None)
        if owner is not None and ip is not None and ip not in used and (not wanted or ip in wanted):
            used.add(ip)
            owner.used += 1
            kept.append((svc, owner))
        else:
            pending.append((svc, cands))
    for svc, owner in kept:
        w = _service_status(svc, _ip(svc), "satisfied", f"address from pool {owner.name}", now)
        if w is not None:
            writes.append(w)
    for svc, cands in pending:
        requested = _requested(svc)
        enabled = [p for p in cands if not p.disabled]
        choice: int | None = None
        chosen_pool: _Pool | None = None
        reason, message = "satisfied", ""
        if requested:
            for a in requested:
                n = _to_int(a)
                pool = next((p for p in enabled if n is not None and p.contains(n)), None)
                if pool is None or n is None:
                    reason, message = "no_pool", f"no matching pool holds the requested address {a}"
                    continue
                if n in used:
                    reason, message = "already_allocated", f"the requested address {a} is in use"
                    continue
                choice, chosen_pool = n, pool
                break
        elif not enabled:
            reason, message = "no_pool", "no enabled pool selects this Service"
        else:
            for pool in enabled:
                choice = next((a for a in pool.addresses() if a not in used), None)
                if choice is not None:
                    chosen_pool = pool
                    break
            if choice is None:
                reason, message = "out_of_ips", "every matching pool is exhausted"
        if choice is not None and chosen_pool is not None:
            used.add(choice)
            chosen_pool.used += 1
            w = _service_status(
                svc,
                str(ipaddress.IPv4Address(choice)),
                "satisfied",
                f"address from pool {chosen_pool.name}",
                now,
            )
        else:
            w = _service_status(svc, "", reason, message, now)
        if w is not None:
            writes.append(w)
    for p in parsed:
        old = as_list(as_map(p.obj.get("status")).get("conditions"))
        conds = [
            _condition(
                CONFLICT,
                "True" if p.conflict_with else "False",
                "cidr_overlap" if p.conflict_with else "resolved",
                f"Pool overlaps with CIDR of {p.conflict_with}" if p.conflict_with else "",
                old,
                now,
            ),
            _condition("cilium.io/IPsTotal", "Unknown", "noreason", str(p.total), old, now),
            _condition(
                "cilium.io/IPsAvailable", "Unknown", "noreason", str(max(p.total - p.used, 0)), old, now
            ),
            _condition("cilium.io/IPsUsed", "Unknown", "noreason", str(p.used), old, now),
        ]
        if p.bad:
            conds.append(
                _condition("nodemesh.io/InvalidBlocks", "True", "invalid_block", "; ".join(p.bad), old, now)
            )
        w = _status_write(
            "CiliumLoadBalancerIPPool", POOL_API_VERSION, p.obj, {"conditions": _merge_conditions(old, conds)}
        )
        if w is not None:
            writes.append(w)
    return writes


def _service_status(svc: dict[str, Any], ip: str, reason: str, message: str, now: str) -> ObjectWrite | None:
    old = as_list(as_map(svc.get("status")).get("conditions"))
    ok = reason == "satisfied"
    cond = _condition(SATISFIED, "True" if ok else "False", reason, message, old, now)
    lb: dict[str, Any] = {"ingress": [{"ip": ip, "ipMode": "VIP"}]} if ip else {}
    return _status_write(
        "Service", "v1", svc, {"loadBalancer": lb, "conditions": _merge_conditions(old, [cond])}
    )
