"""Relays ADS protocol events to NATS and metrics: every ACK/NACK becomes an ``XdsAck`` on ``xds.ack.<node>``.

:class:`AckRelay` builds the server's :class:`Hooks`: it records each ACK/NACK in the
:class:`AckTracker` (what Envoy applied), publishes it (so any service can wait until a config is
*applied*, not just sent), counts pushes/ACKs/NACKs and observes push→ACK latency, and calls
``on_change`` so status can be recomputed. Publishing is fire-and-forget from the event loop; a
failed publish is logged, never raised into the gRPC stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.xds import XdsAck
from services.xds.acks import AckEvent, AckTracker, Sent
from services.xds.server import Hooks
from services.xds.snapshot import LISTENER

__all__ = ["AckRelay"]

log = logging.getLogger("nodemesh.xds.publish")


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class AckRelay:
    """Tracks, publishes and counts ACK/NACKs; ``hooks()`` plugs it into :class:`AdsServer`."""

    def __init__(
        self,
        bus: Bus | None,
        tracker: AckTracker | None = None,
        registry: CollectorRegistry | None = None,
        on_change: Callable[[AckEvent], None] | None = None,
        replica: str = "",
    ) -> None:
        self.bus = bus
        self.replica = replica or f"xds-{os.getpid()}-{os.urandom(3).hex()}"
        self.tracker = tracker or AckTracker()
        self.on_change = on_change
        self._tasks: set[asyncio.Task[Any]] = set()
        self.node_streams: dict[str, int] = {}
        self.pushes = Counter(
            "nodemesh_xds_pushes", "xDS responses sent", ["type", "mode"], registry=registry
        )
        self.resources_sent = Counter(
            "nodemesh_xds_resources_sent", "Resources carried by xDS responses", ["type"], registry=registry
        )
        self.acks = Counter("nodemesh_xds_acks", "ACKs received", ["type"], registry=registry)
        self.nacks = Counter("nodemesh_xds_nacks", "NACKs received", ["type"], registry=registry)
        self.stale = Counter("nodemesh_xds_stale_requests", "Requests with a stale nonce", registry=registry)
        self.streams = Gauge("nodemesh_xds_streams", "Open ADS streams", registry=registry)
        self.convergence = Histogram(
            "nodemesh_xds_convergence_seconds",
            "Time from sending a response to its ACK/NACK",
            ["type"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

    def hooks(self) -> Hooks:
        return Hooks(
            on_sent=self._sent,
            on_ack=self._ack,
            on_stream=self._stream,
            on_stale=self._stale,
            on_fresh=self._fresh,
        )

    def _fresh(self, node: str, type_url: str) -> None:
        self.tracker.reset(node, type_url)

    def _sent(self, s: Sent) -> None:
        self.pushes.labels(type=_short(s.type_url), mode="delta" if s.delta else "sotw").inc()
        self.resources_sent.labels(type=_short(s.type_url)).inc(len(s.resources))

    def _stream(self, node: str, opened: bool, delta: bool) -> None:
        self.streams.inc() if opened else self.streams.dec()
        self.node_streams[node] = max(0, self.node_streams.get(node, 0) + (1 if opened else -1))
        log.info(
            "ADS stream %s for %s (%s)", "opened" if opened else "closed", node, "delta" if delta else "sotw"
        )

    def _stale(self, node: str, type_url: str) -> None:
        self.stale.inc()

    def _ack(self, ev: AckEvent) -> None:
        s = ev.sent
        t = _short(s.type_url)
        (self.acks if ev.ack else self.nacks).labels(type=t).inc()
        self.convergence.labels(type=t).observe(ev.latency)
        self.tracker.record(ev)
        msg = XdsAck(
            node=s.node, type_url=s.type_url, version=s.version, ack=ev.ack, error=ev.error, nonce=s.nonce,
            ts=time.time(), replica=self.replica, delta=s.delta, full_state=s.full_state,
        )  # fmt: skip
        if s.type_url == LISTENER:  # what Programmed needs; other types would only bloat the message
            msg.resources, msg.removed = dict(s.resources), list(s.removed)
        if self.bus is not None:
            task = asyncio.get_running_loop().create_task(self._publish(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.on_change is not None:
            self.on_change(ev)

    def remote(self, msg: XdsAck) -> None:
        """Fold in a listener ACK/NACK another replica published (its Envoy streams are not ours)."""
        if msg.replica == self.replica or msg.type_url != LISTENER or not msg.replica:
            return
        sent = Sent(
            msg.node, msg.type_url, msg.version, msg.nonce, dict(msg.resources), tuple(msg.removed),
            full_state=msg.full_state, delta=msg.delta,
        )  # fmt: skip
        ev = AckEvent(sent, ack=msg.ack, error=msg.error)
        self.tracker.record(ev)
        if self.on_change is not None:
            self.on_change(ev)

    async def _publish(self, msg: XdsAck) -> None:
        assert self.bus is not None
        try:
            await self.bus.publish(subjects.xds_ack(msg.node), msg)
        except Exception as e:
            log.warning("publishing XdsAck failed: %s", e)
