"""What a service touches, declared once: the Kubernetes kinds it reads, the streams and KV buckets
it reads and writes, the subjects it publishes and subscribes to.

Each service has one short ``cell.py`` holding its :class:`Cell` (in the spirit of a Cilium cell:
the component's dependencies in one place). Its ``app.py`` wires from it — the K8S replay takes
``cell.kinds`` — and :mod:`nodemesh.natsauth` derives the service's NATS user from it, so a new
subscription cannot silently lack (or exceed) a permission: a subject missing from the cell is
denied by nats-server, and the cell is the only place that grants it.

Per-node services write ``{node}`` in subjects and key patterns; :meth:`Cell.for_node` fills it in
(with the node's subject token), so node A's user can never act for node B.
"""

from __future__ import annotations

import msgspec

from nodemesh import subjects

__all__ = ["Cell", "KvWrite"]


class KvWrite(msgspec.Struct, frozen=True):
    """Write access to the keys of ``bucket`` matching ``keys`` (a NATS subject pattern)."""

    bucket: str
    keys: str = ">"


class Cell(msgspec.Struct, frozen=True, kw_only=True):
    #: The service's name (``services/<name>``) and, for central services, its NATS user.
    name: str
    #: One instance per node (NATS user ``<name>-<node>``); else replicas share one user.
    per_node: bool = False
    #: Kubernetes kinds replayed from stream K8S (:class:`nodemesh.k8scache.K8sCache`).
    kinds: tuple[str, ...] = ()
    #: Streams read (other than KV buckets), by name.
    reads_streams: tuple[str, ...] = ()
    #: KV buckets read (watched or fetched), by name.
    reads_buckets: tuple[str, ...] = ()
    #: KV keys written.
    writes: tuple[KvWrite, ...] = ()
    #: Subjects published to (requests included).
    publishes: tuple[str, ...] = ()
    #: Subjects subscribed to (requests served included).
    subscribes: tuple[str, ...] = ()
    #: JetStream API subjects beyond reading and provisioning (e.g. a stream update it needs).
    js_api: tuple[str, ...] = ()

    def user(self, node: str = "") -> str:
        return f"{self.name}-{node}" if self.per_node else self.name

    def for_node(self, node: str) -> Cell:
        """This cell with ``{node}`` filled in (the node's subject token) everywhere."""
        if not self.per_node:
            return self
        tok = subjects.token(node)

        def fill(xs: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(x.replace("{node}", tok) for x in xs)

        return msgspec.structs.replace(
            self,
            publishes=fill(self.publishes),
            subscribes=fill(self.subscribes),
            writes=tuple(KvWrite(w.bucket, w.keys.replace("{node}", tok)) for w in self.writes),
            js_api=fill(self.js_api),
        )
