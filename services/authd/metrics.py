"""authd's Prometheus metrics (names follow nodemesh_<area>_<what>)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "nodemesh_auth_handshake_seconds",
            "Duration of successful authd handshakes (connect to both close_notifies)",
            ["role"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.handshakes = Counter(
            "nodemesh_auth_handshakes",
            "Handshakes by role, result (ok, failed, refused) and reason",
            ["role", "result", "reason"],
            registry=registry,
        )
        self.signals = Counter(
            "nodemesh_auth_signals",
            "Auth-required signals by outcome (queued, deduped, cached, skipped, dropped)",
            ["outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "nodemesh_auth_queue_dropped",
            "Signals dropped because the reactive queue was full",
            registry=registry,
        )
        self.pending = Gauge("nodemesh_auth_pending", "Handshakes queued or in flight", registry=registry)
        self.entries = Gauge("nodemesh_auth_entries", "Auth entries by state", ["state"], registry=registry)
        self.verdicts = Counter(
            "nodemesh_auth_verdicts",
            "Verdicts published, by kind (granted, revoked)",
            ["kind"],
            registry=registry,
        )
