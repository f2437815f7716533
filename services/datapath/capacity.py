"""Metrics of the policy map's capacity: endpoints failing closed because their policy did not fit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CapacityCollector"]


class CapacityCollector(Collector):
    """Read at scrape time from the agent's policy writer."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        w = self.agent.writer
        closed = GaugeMetricFamily(
            "nodemesh_datapath_endpoints_fail_closed",
            "Endpoints denying all traffic because their policy did not fit the policy map",
        )
        closed.add_metric([], float(len(w.failed)) if w is not None else 0.0)
        yield closed
        full = CounterMetricFamily(
            "nodemesh_datapath_policy_map_full_writes", "Policy map writes refused for want of space"
        )
        full.add_metric([], float(w.full_writes) if w is not None else 0.0)
        yield full
        gc = CounterMetricFamily(
            "nodemesh_datapath_conntrack_gc_deleted", "Conntrack entries removed by GC and endpoint removal"
        )
        gc.add_metric([], float(self.agent.ct_gc_deleted))
        yield gc
        gate = CounterMetricFamily(
            "nodemesh_datapath_auth_gate_timeouts",
            "New pods whose workload started without the auth verdicts its policies need (after the wait)",
        )
        gate.add_metric([], float(getattr(self.agent, "auth_gate_timeouts", 0)))
        yield gate
