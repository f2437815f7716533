"""The DNS service's Prometheus metrics (children are cached: the hot path pays a dict lookup)."""

from __future__ import annotations

from collections.abc import Callable

import dns.rcode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DnsMetrics"]

# From a cache hit (tens of µs) to a slow upstream (the forward timeout).
_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.queries = Counter(
            "nodemesh_dns_queries",
            "Queries answered, by transport, response code and source (cache, zone, forward, error)",
            ["transport", "rcode", "source"],
            registry=registry,
        )
        self.latency = Histogram(
            "nodemesh_dns_request_duration_seconds",
            "Time from receiving a query to sending its answer",
            ["transport"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.bad = Counter(
            "nodemesh_dns_bad_queries",
            "Packets that were not a well-formed query (answered FORMERR or dropped), by reason",
            ["reason"],
            registry=registry,
        )
        self.forward_failures = Counter(
            "nodemesh_dns_forward_failures",
            "Queries for names outside the cluster domain answered SERVFAIL, by reason",
            ["reason"],
            registry=registry,
        )
        self.send_errors = Counter(
            "nodemesh_dns_send_errors",
            "Answers that could not be sent (socket buffer full, client gone)",
            ["transport"],
            registry=registry,
        )
        self.zone_names = Gauge(
            "nodemesh_dns_zone_names", "Names holding records in the cluster zone", registry=registry
        )
        self.tcp_connections = Gauge(
            "nodemesh_dns_tcp_connections", "Open TCP client connections", registry=registry
        )
        self._q: dict[tuple[str, int, str], Callable[[], None]] = {}
        self._lat = {t: self.latency.labels(transport=t) for t in ("udp", "tcp")}

    def answered(self, transport: str, rcode: int, source: str, seconds: float) -> None:
        key = (transport, rcode, source)
        inc = self._q.get(key)
        if inc is None:
            name = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
            child = self.queries.labels(transport=transport, rcode=name, source=source)
            inc = self._q[key] = child.inc
        inc()
        self._lat[transport].observe(seconds)
