"""L7 visibility without enforcement: Cilium's ``policy.cilium.io/proxy-visibility`` pod annotation.

``"<Ingress/8080/TCP/HTTP>,<Egress/80/TCP/HTTP>"`` asks for HTTP flows (and Hubble's HTTP metrics) on
those ports of the pod. ``with_visibility`` turns it into policy-map entries that send the port's
flows through the node's L7 listener with a match-everything HTTP rule, without changing what is
allowed:

- a direction no policy enforces (its allow-all entry) gets an allow for the port from any peer that
  redirects; everything else stays allowed, nothing becomes default-deny;
- an enforced direction keeps its verdicts: each allow that covers the port (from an identity or from
  anyone) redirects for that port; denies and unallowed peers stay dropped at L3/L4; a port that
  already has HTTP rules keeps them.

Pure; the datapath agent applies it to the maps and the xds translation to the listeners, from the same
annotation, so both agree. Only HTTP over TCP (the proxy speaks HTTP): any other protocol is an error.
"""

from __future__ import annotations

import re

import msgspec

from nodemesh.policy.model import (
    DIR_EGRESS,
    DIR_INGRESS,
    EndpointPolicy,
    HTTPRule,
    PolicyKey,
    PolicyValue,
    ProxyPorts,
)

__all__ = ["ANNOTATION", "Visibility", "parse_visibility", "pod_visibility", "with_visibility"]

ANNOTATION = "policy.cilium.io/proxy-visibility"
_TCP = 6
_ENTRY = re.compile(r"<\s*(Ingress|Egress)\s*/\s*(\d{1,5})\s*/\s*(\w+)\s*/\s*(\w+)\s*>", re.IGNORECASE)


class Visibility(msgspec.Struct, frozen=True, order=True):
    direction: int  # DIR_INGRESS | DIR_EGRESS
    port: int


def parse_visibility(value: str) -> tuple[tuple[Visibility, ...], tuple[str, ...]]:
    """The annotation's value → (what to see, errors). Entries in error are left out, the rest apply."""
    out: set[Visibility] = set()
    errors: list[str] = []
    for raw in (p.strip() for p in value.split(",")):
        if not raw:
            continue
        m = _ENTRY.fullmatch(raw)
        if m is None:
            errors.append(f"{raw!r}: expected <Ingress|Egress/port/TCP/HTTP>")
            continue
        direction, port, proto, l7 = m.group(1).lower(), int(m.group(2)), m.group(3), m.group(4)
        if not 1 <= port <= 65535:
            errors.append(f"{raw!r}: port out of range")
        elif proto.upper() != "TCP" or l7.upper() != "HTTP":
            errors.append(f"{raw!r}: only TCP/HTTP is supported (the node's proxy speaks HTTP)")
        else:
            out.add(Visibility(DIR_INGRESS if direction == "ingress" else DIR_EGRESS, port))
    return tuple(sorted(out)), tuple(errors)


def pod_visibility(pod: object) -> tuple[tuple[Visibility, ...], tuple[str, ...]]:
    """The annotation of a Pod object (a mapping); no annotation → nothing, no error."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    value = ann.get(ANNOTATION) if isinstance(ann, dict) else None
    if value is None:
        return (), ()
    if not isinstance(value, str):
        return (), (f"{ANNOTATION} must be a string",)
    return parse_visibility(value)


def _port_key(identity: int, direction: int, port: int) -> PolicyKey:
    return PolicyKey(identity, direction, _TCP, port, 16)


def with_visibility(
    policy: EndpointPolicy, wanted: tuple[Visibility, ...], ports: ProxyPorts
) -> EndpointPolicy:
    """``policy`` with the wanted ports redirected to the L7 listener (see the module doc); the
    verdicts of every packet stay those of ``policy``."""
    if not wanted:
        return policy
    entries = dict(policy.entries)
    l7 = dict(policy.l7)
    match_all = (HTTPRule(),)
    for vis in wanted:
        d, port = vis.direction, vis.port
        proxy = ports.ingress if d == DIR_INGRESS else ports.egress
        enforced = policy.ingress_enforced if d == DIR_INGRESS else policy.egress_enforced
        if not enforced:
            entries.setdefault(PolicyKey(0, d), PolicyValue())  # the direction's allow-all stays
            key = _port_key(0, d, port)
            if not entries.get(key, PolicyValue()).proxy_port:
                entries[key] = PolicyValue(proxy_port=proxy)
                l7[key] = match_all
            continue
        for k, v in policy.entries.items():
            if v.deny or k.direction != d or not k.covers(_port_key(k.identity, d, port)):
                continue
            key = _port_key(k.identity, d, port)
            current = entries.get(key, v)
            if current.deny or current.proxy_port:
                continue  # denied there, or HTTP rules already apply
            # a same-identity deny wider than the port would be shadowed by a more specific allow
            if key != k and any(
                dv.deny and dk.covers(key) for dk, dv in policy.entries.items() if dk.identity == k.identity
            ):
                continue
            entries[key] = PolicyValue(auth_type=current.auth_type, proxy_port=proxy)
            l7[key] = match_all
    return EndpointPolicy(
        ingress_enforced=policy.ingress_enforced,
        egress_enforced=policy.egress_enforced,
        entries=entries,
        l7=l7,
    )
