"""The records cluster DNS serves, and the name helpers that build their owner names (pure).

Names are kept lower-case, without the trailing dot (``web.demo.svc.cluster.local``); DNS compares
names case-insensitively, and the responder answers with the name exactly as the client asked it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "Addr",
    "Cname",
    "Ns",
    "Ptr",
    "Record",
    "Srv",
    "Txt",
    "dashed",
    "normalize",
    "reverse_name",
    "valid_name",
]


@dataclass(frozen=True, slots=True)
class Addr:
    """An A (IPv4) or AAAA (IPv6) record."""

    ip: str

    @property
    def v6(self) -> bool:
        return ":" in self.ip


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Ptr:
    target: str


@dataclass(frozen=True, slots=True)
class Cname:
    target: str


@dataclass(frozen=True, slots=True)
class Txt:
    text: str


@dataclass(frozen=True, slots=True)
class Ns:
    target: str


Record = Addr | Srv | Ptr | Cname | Txt | Ns


def normalize(name: str) -> str:
    """``Web.Demo.SVC.cluster.local.`` → ``web.demo.svc.cluster.local``."""
    return name.lower().rstrip(".")


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a DNS owner name: labels of 1 to 63 octets, 253 octets in all, ASCII."""
    if not name or len(name) > 253 or not name.isascii():
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


def reverse_name(ip: str) -> str:
    """``10.96.0.10`` → ``10.0.96.10.in-addr.arpa`` (and the nibble form for IPv6)."""
    return normalize(ipaddress.ip_address(ip).reverse_pointer)


def dashed(ip: str) -> str:
    """The hostname Kubernetes DNS gives an endpoint without one: ``10.244.1.5`` → ``10-244-1-5``."""
    return ip.replace(".", "-").replace(":", "-")
