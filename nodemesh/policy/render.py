"""Human-readable rendering of policy-map entries (golden tests, debugging, CLI output).

One line per entry, sorted: ``ingress  web(1001)  tcp/8000-8003  allow auth=spire proxy=10001``.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodemesh.policy.model import (
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    RESERVED_IDENTITIES,
    EndpointPolicy,
    PolicyKey,
    PolicyValue,
)

__all__ = ["render_entry", "render_policy"]

PROTO_NAMES = {
    PROTO_ANY: "any",
    PROTO_ICMP: "icmp",
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMPV6: "icmpv6",
    PROTO_SCTP: "sctp",
}
AUTH_NAMES = {1: "spire", 2: "test-always-fail"}


def render_entry(key: PolicyKey, value: PolicyValue, names: Mapping[int, str] | None = None) -> str:
    names = names or {}
    if key.identity == 0:
        peer = "any"
    elif key.identity in names:
        peer = names[key.identity]
    elif key.identity in RESERVED_IDENTITIES:
        peer = RESERVED_IDENTITIES[key.identity]
    else:
        peer = str(key.identity)
    proto = PROTO_NAMES.get(key.proto, str(key.proto))
    if key.proto == PROTO_ANY:
        port = "any"
    elif key.port_prefix_len == 0:
        port = f"{proto}/any"
    elif key.proto in (PROTO_ICMP, PROTO_ICMPV6):
        port = f"{proto}/type{key.dport}"
    else:
        lo, hi = key.port_range()
        port = f"{proto}/{lo}" if lo == hi else f"{proto}/{lo}-{hi}"
    verdict = "deny" if value.deny else "allow"
    if value.auth_type:
        verdict += f" auth={AUTH_NAMES.get(value.auth_type, value.auth_type)}"
    if value.proxy_port:
        verdict += f" proxy={value.proxy_port}"
    direction = "ingress" if key.direction == 0 else "egress"
    return f"{direction} {peer} {port} {verdict}"


def render_policy(pol: EndpointPolicy, names: Mapping[int, str] | None = None) -> list[str]:
    """Sorted lines for every entry, then ``l7`` lines for redirecting keys."""
    lines = sorted(render_entry(k, v, names) for k, v in pol.entries.items())
    for k, rules in sorted(pol.l7.items()):
        head = render_entry(k, pol.entries[k], names).rsplit(" allow", 1)[0]
        for r in rules:
            parts = [f"{f}={getattr(r, f)}" for f in ("method", "path", "host") if getattr(r, f)]
            parts += [f"header={h}" for h in r.headers]
            lines.append(f"l7 {head} http {' '.join(parts) or '*'}")
    return lines
