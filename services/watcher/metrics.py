"""The watcher's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["WatcherMetrics"]


class WatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.published = Counter(
            "nodemesh_watcher_events_published",
            "ObjectEvents published to stream K8S",
            ["kind", "type"],
            registry=registry,
        )
        self.skipped = Counter(
            "nodemesh_watcher_events_unchanged",
            "Listed objects not re-published because the stream holds them",
            ["kind"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "nodemesh_watcher_publish_errors",
            "Object versions that could not be published",
            ["kind", "reason"],
            registry=registry,
        )
        self.relists = Counter(
            "nodemesh_watcher_relists",
            "Lists of a kind after the first (410 Expired, missing kind retry)",
            ["kind", "reason"],
            registry=registry,
        )
        self.leader = Gauge(
            "nodemesh_watcher_leader", "1 while this watcher holds the lease", registry=registry
        )
        self.lease_transitions = Counter(
            "nodemesh_watcher_lease_transitions",
            "Times this watcher became active or stepped down",
            ["to"],
            registry=registry,
        )
        self.status_patches = Counter(
            "nodemesh_watcher_status_patches",
            "StatusPatch messages handled",
            ["result"],
            registry=registry,
        )
        self.object_writes = Counter(
            "nodemesh_watcher_object_writes",
            "The operator's object writes (k8s.write.*) handled",
            ["op", "result"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "nodemesh_watcher_watch_restarts",
            "Watch streams re-opened (timeout, error)",
            ["kind", "reason"],
            registry=registry,
        )
