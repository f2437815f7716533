"""L7 load-balancing of Services by annotation (Cilium 1.13 ``service.cilium.io/lb-l7``): the one rule
the datapath and xds both follow (pure).

A TCP port of an annotated Service is served by the client's node's Envoy: xds gives each node's
Envoy a listener on ``<router IP of the node>:<listener port>`` (the ``.1`` of its pod CIDR, on the
host's ``lo``, reachable from the node's pods and host processes), and the socket load-balancer
rewrites ``connect()`` to the Service's ClusterIP to that address. The two never talk to each other
about it: both derive the listener port from the Services they see, with :func:`assign`.

The port rule: a Service port prefers ``PORT_BASE + crc32("<ns>/<name>/<port>") % PORT_COUNT``; in the
order (creationTimestamp, namespace, name, port) each takes its preferred port or, when an earlier one
has it, the next free one (wrapping in the range). An older Service never moves because a newer one
appears, so both sides agree while one of them has not yet seen a new Service; a collision is
reported (``Assignment.notes``). The range 20000-29999 is below Kubernetes' NodePort range and the
kernel's default ephemeral ports (32768+), so no outgoing connection from the router IP holds it.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_ANNOTATION",
    "ANNOTATION",
    "DEFAULT_ALGORITHM",
    "PORT_BASE",
    "PORT_COUNT",
    "SERVICE_TAG",
    "Assignment",
    "Claim",
    "PortKey",
    "algorithm",
    "assign",
    "claims",
    "enabled",
    "listener",
    "preferred_port",
    "router_ip",
]

ANNOTATION = "service.cilium.io/lb-l7"
ALGORITHM_ANNOTATION = "service.cilium.io/lb-l7-algorithm"
ALGORITHMS = ("round_robin", "least_request", "random")
DEFAULT_ALGORITHM = "round_robin"
PORT_BASE = 20000
PORT_COUNT = 10000
#: Access log custom tag on an lb-l7 listener naming its Service (``<ns>/<name>``): the L7 flows'
#: destination_service (services/datapath/accesslog/convert.py).
SERVICE_TAG = "nodemesh.service"


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def enabled(annotations: Mapping[str, Any] | None) -> bool:
    """Whether ``service.cilium.io/lb-l7`` asks for L7 load-balancing (``enabled``, any case)."""
    return str(_dict(annotations).get(ANNOTATION, "")).strip().lower() == "enabled"


def algorithm(annotations: Mapping[str, Any] | None) -> tuple[str, str]:
    """The Envoy load-balancing algorithm and an error ("" = none). An absent annotation is
    ``round_robin``; a value that is not one of :data:`ALGORITHMS` is reported, and round_robin used."""
    raw = _dict(annotations).get(ALGORITHM_ANNOTATION)
    if raw is None:
        return DEFAULT_ALGORITHM, ""
    value = str(raw).strip()
    if value in ALGORITHMS:
        return value, ""
    return DEFAULT_ALGORITHM, (
        f"{ALGORITHM_ANNOTATION} {value!r} is not one of {', '.join(ALGORITHMS)}; using {DEFAULT_ALGORITHM}"
    )


@dataclass(frozen=True, order=True)
class PortKey:
    """One Service port that Envoy balances: (namespace, name, Service port number)."""

    namespace: str
    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, order=True)
class Claim:
    """A Service port asking for a listener port; ordered as :func:`assign` serves them."""

    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text); "" first
    key: PortKey


def preferred_port(key: PortKey) -> int:
    return PORT_BASE + zlib.crc32(f"{key.namespace}/{key.name}/{key.port}".encode()) % PORT_COUNT


def claims(svc: Mapping[str, Any]) -> list[Claim]:
    """The listener ports a Service asks for: each TCP port of an lb-l7 Service with a ClusterIP."""
    meta, spec = _dict(svc.get("metadata")), _dict(svc.get("spec"))
    if not enabled(_dict(meta.get("annotations"))):
        return []
    cluster_ip = spec.get("clusterIP")
    if spec.get("type") == "ExternalName" or not isinstance(cluster_ip, str) or cluster_ip in ("", "None"):
        return []  # not load-balanced (headless, ExternalName) or no ClusterIP allocated yet
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    created = str(meta.get("creationTimestamp") or "")
    out = []
    ports = spec.get("ports")
    for p in ports if isinstance(ports, list) else []:
        p = _dict(p)
        port = p.get("port")
        if str(p.get("protocol") or "TCP") != "TCP" or not isinstance(port, int) or isinstance(port, bool):
            continue
        if 0 < port < 65536:
            out.append(Claim(created, PortKey(ns, name, port)))
    return out


@dataclass
class Assignment:
    ports: dict[PortKey, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # collisions resolved by taking the next port
    errors: list[str] = field(default_factory=list)  # ports left without a listener (range full)


def assign(all_claims: Iterable[Claim]) -> Assignment:
    """Every claim's listener port (see the module docstring); deterministic in the set of claims."""
    out = Assignment()
    taken: dict[int, PortKey] = {}
    for c in sorted(set(all_claims)):
        if c.key in out.ports:
            continue
        want = preferred_port(c.key)
        for i in range(PORT_COUNT):
            p = PORT_BASE + (want - PORT_BASE + i) % PORT_COUNT
            if p not in taken:
                break
        else:
            last = PORT_BASE + PORT_COUNT - 1
            out.errors.append(f"Service {c.key}: no free lb-l7 listener port in {PORT_BASE}-{last}")
            continue
        if p != want:
            out.notes.append(f"Service {c.key}: lb-l7 listener port {want} is {taken[want]}'s; using {p}")
        taken[p] = c.key
        out.ports[c.key] = p
    return out


def router_ip(pod_cidr: str) -> str:
    """The node's router IP: the first address of its pod CIDR ("" when there is none)."""
    try:
        return str(next(ipaddress.IPv4Network(pod_cidr, strict=False).hosts()))
    except (ValueError, StopIteration):
        return ""


def listener(pod_cidr: str, port: int) -> tuple[str, int] | None:
    """Where a node's Envoy listens for one lb-l7 Service port: (router IP, listener port)."""
    ip = router_ip(pod_cidr)
    return (ip, port) if ip and PORT_BASE <= port < PORT_BASE + PORT_COUNT else None
