"""Ring buffer → NATS: a poller thread reads BPF events, the event loop publishes them.

The thread hands batches to the loop; at most ``max_batches`` wait there, and a batch beyond that is
dropped and counted (``lost_queue``); an event NATS does not take is counted too (``lost_publish``),
so with the kernel-side counter of failed ring-buffer reserves every event is either delivered or
counted: delivered + lost = emitted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from services.datapath.flows import DROP_REASONS, Directory, ServiceLookup, auth_required, event_to_flow
from services.datapath.hubblemetrics import FlowMetrics
from services.datapath.loader import Loader
from services.datapath.maps import EVT_AUTH_REQUIRED, STAT_EVENTS, STAT_LOST_EVENTS, STAT_PACKETS, Event

__all__ = ["EventPump"]

log = logging.getLogger("nodemesh.datapath.events")


class EventPump:
    def __init__(
        self,
        loader: Loader,
        directory: Directory,
        bus: Bus,
        registry: CollectorRegistry,
        max_batches: int = 4096,
        services: ServiceLookup | None = None,
        flow_metrics: FlowMetrics | None = None,
    ) -> None:
        self.loader = loader
        self.dir = directory
        self.services = services
        self.bus = bus
        self.max_batches = max_batches
        self.node = directory.node
        self.lost_queue = 0
        self.lost_publish = 0
        self.delivered = 0
        self._batches: collections.deque[list[Event]] = collections.deque()
        self._ready = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Event] = []
        # shared with the access log receiver when the app passes it: one set of Hubble flow metrics
        self.metrics = flow_metrics if flow_metrics is not None else FlowMetrics(registry)
        registry.register(_BpfCollector(self))

    # --- thread side --------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.loader.open_events(self._on_event)
        self._thread = threading.Thread(target=self._poll, name="ringbuf", daemon=True)
        self._thread.start()

    def _on_event(self, ev: Event) -> None:
        self._pending.append(ev)  # looked up per call: _poll swaps the list

    def _poll(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            try:
                self.loader.poll(100)
            except Exception:
                log.exception("ring buffer poll failed")
                time.sleep(0.1)
            if self._pending:
                batch, self._pending = self._pending, []
                self.loader_batch(batch)

    def loader_batch(self, batch: list[Event]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:  # loop closed on shutdown
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    # --- loop side ----------------------------------------------------------------------------
    def _deliver(self, batch: list[Event]) -> None:
        if len(self._batches) >= self.max_batches:
            self.lost_queue += len(batch)
            return
        self._batches.append(batch)
        self._ready.set()

    async def run(self) -> None:
        flow_subject = subjects.flows(self.node)
        auth_subject = subjects.auth_required(self.node)
        nc = self.bus.nc
        while True:
            await self._ready.wait()
            self._ready.clear()
            offset = time.time_ns() - time.monotonic_ns()
            while self._batches:
                batch = self._batches.popleft()
                for ev in batch:
                    try:
                        if ev.type == EVT_AUTH_REQUIRED:
                            await nc.publish(auth_subject, encode(auth_required(ev, self.dir, time.time())))
                            continue
                        flow = event_to_flow(ev, self.dir, offset, self.services)
                        await nc.publish(flow_subject, encode(flow))
                    except Exception as e:  # NATS down or a full outbound buffer: count, keep going
                        self.lost_publish += 1
                        if self.lost_publish & (self.lost_publish - 1) == 0:  # log 1, 2, 4, 8, … times
                            log.warning("publishing an event failed: %s", e)
                        continue
                    self.delivered += 1
                    self.metrics.observe(flow)
                await asyncio.sleep(0)


class _BpfCollector(Collector):
    """Counters kept in the kernel, read at scrape time."""

    def __init__(self, pump: EventPump) -> None:
        self.pump = pump

    def collect(self):  # type: ignore[no-untyped-def]
        ld = self.pump.loader
        if not ld.is_loaded:
            return
        lost = CounterMetricFamily(
            "hubble_lost_events", "Events lost before reaching NATS", labels=["source"]
        )
        lost.add_metric(["perf_event_ring_buffer"], ld.stat(STAT_LOST_EVENTS))
        lost.add_metric(["observer_events_queue"], self.pump.lost_queue)
        lost.add_metric(["nats_publish"], self.pump.lost_publish)
        yield lost
        drops = CounterMetricFamily(
            "nodemesh_datapath_drops", "Packets dropped by the tc programs", labels=["reason"]
        )
        for reason, n in sorted(ld.drops().items()):
            drops.add_metric([DROP_REASONS.get(reason, str(reason))], n)
        yield drops
        ev = CounterMetricFamily("nodemesh_datapath_events", "Events written to the ring buffer")
        ev.add_metric([], ld.stat(STAT_EVENTS))
        yield ev
        pk = CounterMetricFamily("nodemesh_datapath_packets", "Packets seen on endpoints")
        pk.add_metric([], ld.stat(STAT_PACKETS))
        yield pk
