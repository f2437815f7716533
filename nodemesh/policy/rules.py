"""The parsed form of a policy: flat rules the resolver turns into map entries.

One :class:`Rule` is one (direction, allow/deny, peers, one ``toPorts`` element) of a policy, for the
endpoints its ``subject`` selects. :class:`Enforce` records that a policy has a section in a direction
for the endpoints it selects — that alone makes the direction default-deny, even with no rule
(``ingress: [{}]``).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from nodemesh.policy.labels import Selector
from nodemesh.policy.model import HTTPRule, PolicyRef

__all__ = ["Enforce", "ParseError", "ParseResult", "ParsedPolicy", "Peer", "PortSpec", "Rule"]


class ParseError(msgspec.Struct, frozen=True):
    """``path`` is a JSON-path-like location in the object (``spec.ingress[0].toPorts[0]``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Peer(msgspec.Struct, frozen=True, order=True):
    """A set of peer identities.

    ``all``: any peer (identity 0 in the map). ``selector``: identities whose labels match.
    ``cidr``: CIDR identities inside ``cidr`` and outside every ``excepts`` (plus the world identities
    when ``cidr`` is a /0, as Cilium maps 0.0.0.0/0 to ``reserved:world``).
    """

    kind: Literal["all", "selector", "cidr"]
    selector: Selector | None = None
    cidr: str = ""
    excepts: tuple[str, ...] = ()

    def contains_cidr(self, prefix: str) -> bool:
        """True if the CIDR identity for ``prefix`` is selected by this ``cidr`` peer."""
        net = ipaddress.ip_network(prefix)
        base = ipaddress.ip_network(self.cidr)
        if net.version != base.version or not net.subnet_of(base):  # type: ignore[arg-type]
            return False
        for e in self.excepts:
            ex = ipaddress.ip_network(e)
            if ex.version == net.version and net.subnet_of(ex):  # type: ignore[arg-type]
                return False
        return True


class PortSpec(msgspec.Struct, frozen=True, order=True):
    """``proto`` 0 = any; ``port`` 0 = any port; ``end_port`` ≥ ``port`` for a range (0 = just
    ``port``); ``name`` is a named port resolved per endpoint (then ``port`` is 0). For ICMP,
    ``port`` is the ICMP type."""

    proto: int
    port: int = 0
    end_port: int = 0
    name: str = ""
    icmp_type: bool = False  # ``port`` is an exact ICMP type (0 = echo reply, not "any")


class Rule(msgspec.Struct, frozen=True):
    policy: PolicyRef
    subject: Selector  # which endpoints the rule applies to
    host: bool  # subject is a nodeSelector: it selects host endpoints only
    direction: int
    deny: bool
    peers: tuple[Peer, ...]  # empty = selects no peer
    ports: tuple[PortSpec, ...]  # empty = any protocol and port
    auth_type: int | None = None  # None = not given; 0 = explicitly disabled
    l7: tuple[HTTPRule, ...] | None = None  # HTTP rules → redirect to the proxy
    index: int = 0  # position in its policy: an edited rule keeps its slot, so only its diff is applied


class Enforce(msgspec.Struct, frozen=True):
    subject: Selector
    host: bool
    direction: int


class ParsedPolicy(msgspec.Struct, frozen=True):
    ref: PolicyRef
    rules: tuple[Rule, ...]
    enforce: tuple[Enforce, ...]
    cidrs: tuple[str, ...]  # every CIDR mentioned (bases and excepts), normalized


class ParseResult(msgspec.Struct, frozen=True):
    """Either ``policy`` (valid) or ``errors`` (non-empty); never both."""

    ref: PolicyRef
    policy: ParsedPolicy | None = None
    errors: tuple[ParseError, ...] = ()
