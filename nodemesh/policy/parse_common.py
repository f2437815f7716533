"""Shared pieces of policy parsing: error collection, label selectors, ports, CIDRs.

Every parse function appends :class:`ParseError` s to an :class:`Errors` and returns a best-effort
value; the caller rejects the policy if any error was collected. Nothing here raises on bad input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from nodemesh.policy.labels import LabelReq, Selector, split_key
from nodemesh.policy.model import (
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
)
from nodemesh.policy.rules import ParseError, PortSpec

__all__ = [
    "PROTOCOLS",
    "Errors",
    "as_list",
    "as_map",
    "parse_cidr",
    "parse_port",
    "parse_selector",
]

PROTOCOLS: dict[str, int] = {
    "ANY": PROTO_ANY,
    "TCP": PROTO_TCP,
    "UDP": PROTO_UDP,
    "SCTP": PROTO_SCTP,
    "ICMP": PROTO_ICMP,
    "ICMPV6": PROTO_ICMPV6,
}

# Cilium's named-port pattern (IANA service name: letters, digits, single dashes, one letter at least).
_NAMED_PORT = re.compile(r"^([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$")
_OPS = ("In", "NotIn", "Exists", "DoesNotExist")


class Errors:
    def __init__(self) -> None:
        self.items: list[ParseError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(ParseError(path, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def as_map(value: Any, path: str, errs: Errors) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errs.add(path, f"must be an object, not {type(value).__name__}")
        return {}
    return value


def as_list(value: Any, path: str, errs: Errors) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.add(path, f"must be a list, not {type(value).__name__}")
        return []
    return value


def parse_selector(
    value: Any, path: str, errs: Errors, *, source: str = "", key_prefix: str = ""
) -> Selector:
    """A Kubernetes LabelSelector. ``source`` is given to keys without one (``k8s`` for NetworkPolicy);
    ``key_prefix`` is prepended to every key (namespace selectors → namespace labels)."""
    sel = as_map(value, path, errs)
    reqs: list[LabelReq] = []

    def key_of(raw: str) -> tuple[str, str]:
        src, key = split_key(raw)
        if src == "any" and source:
            src = source
        return src, key_prefix + key

    labels = as_map(sel.get("matchLabels"), f"{path}.matchLabels", errs)
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            errs.add(f"{path}.matchLabels", f"{_show(k)} is not a label key")
            continue
        if v is None:
            v = ""
        if not isinstance(v, str):
            errs.add(f"{path}.matchLabels.{k}", f"{_show(v)} must be a string")
            continue
        src, key = key_of(k)
        reqs.append(LabelReq(src, key, "In", (v,)))
    for i, expr in enumerate(as_list(sel.get("matchExpressions"), f"{path}.matchExpressions", errs)):
        p = f"{path}.matchExpressions[{i}]"
        e = as_map(expr, p, errs)
        raw_key, op, values = e.get("key"), e.get("operator"), e.get("values")
        if not isinstance(raw_key, str) or not raw_key:
            errs.add(f"{p}.key", "is required")
            continue
        if op not in _OPS:
            errs.add(f"{p}.operator", f"{_show(op)} is not one of {', '.join(_OPS)}")
            continue
        vals = as_list(values, f"{p}.values", errs)
        if not all(isinstance(v, str) for v in vals):
            errs.add(f"{p}.values", "must be strings")
            continue
        if op in ("In", "NotIn") and not vals:
            errs.add(f"{p}.values", f"must not be empty for operator {op}")
            continue
        if op in ("Exists", "DoesNotExist") and vals:
            errs.add(f"{p}.values", f"must be empty for operator {op}")
            continue
        src, k = key_of(raw_key)
        reqs.append(LabelReq(src, k, op, tuple(sorted(vals))))
    return Selector(tuple(sorted(set(reqs))))


def parse_cidr(value: Any, path: str, errs: Errors) -> str | None:
    """A CIDR or a plain IP (→ /32 or /128), normalized (host bits masked, as Go's ParseCIDR does)."""
    if not isinstance(value, str):
        errs.add(path, f"{_show(value)} is not a CIDR")
        return None
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        errs.add(path, f"{_show(value)} is not a CIDR")
        return None


def parse_port(
    item: Any, path: str, errs: Errors, *, default_proto: str, allowed: tuple[str, ...]
) -> list[PortSpec]:
    """One ``{port, endPort, protocol}``. A named port needs an exact protocol or ANY."""
    m = as_map(item, path, errs)
    proto_raw = m.get("protocol") or default_proto
    if not isinstance(proto_raw, str) or proto_raw.upper() not in allowed:
        errs.add(f"{path}.protocol", f"{_show(proto_raw)} is not one of {', '.join(allowed)}")
        return []
    proto = PROTOCOLS[proto_raw.upper()]
    raw = m.get("port")
    port, name = 0, ""
    if raw is None or raw == "":
        port = 0
    elif isinstance(raw, bool):
        errs.add(f"{path}.port", f"{_show(raw)} is not a port")
        return []
    elif isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
        port = int(raw)
        if not 0 <= port <= 65535:
            errs.add(f"{path}.port", f"{_show(raw)} is not a port")
            return []
    elif isinstance(raw, str) and len(raw) <= 15 and _NAMED_PORT.match(raw):
        name = raw.lower()
    else:
        errs.add(f"{path}.port", f"{_show(raw)} is not a port")
        return []
    end_raw = m.get("endPort")
    end = 0
    if end_raw is not None:
        if isinstance(end_raw, bool) or not isinstance(end_raw, int) or not 0 <= end_raw <= 65535:
            errs.add(f"{path}.endPort", f"{_show(end_raw)} is not a port")
            return []
        if name or port == 0:
            errs.add(f"{path}.endPort", "needs a numeric port")
            return []
        if end_raw < port:
            errs.add(f"{path}.endPort", f"{end_raw} is below port {port}")
            return []
        end = end_raw if end_raw != port else 0
    if proto in (PROTO_ICMP, PROTO_ICMPV6) and (end or name or port > 255):
        errs.add(f"{path}.port", f"{_show(raw)} is not an ICMP type")
        return []
    icmp = proto in (PROTO_ICMP, PROTO_ICMPV6) and raw not in (None, "")
    return [PortSpec(proto, port, end, name, icmp_type=icmp)]
