"""NATS server metrics as Prometheus text, for ``nodemesh up --monitoring``.

nats-server's monitoring endpoint speaks JSON (``/varz``, ``/jsz``); the NATS project's answer is a
separate exporter (prometheus-nats-exporter), which is not packaged here. This is the part of it a
local cluster needs: on every scrape it reads ``/varz`` and ``/jsz`` and answers with the exporter's
metric names (``gnatsd_varz_*``, ``gnatsd_jsz_*``), so dashboards written for it work. A NATS server
that does not answer makes ``nats_up`` 0 instead of failing the scrape.

``python -m localcluster.natsexporter --monitor 127.0.0.1:8222 --listen 127.0.0.1:7777``
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["NatsCollector", "main", "varz_metrics"]

# /varz field → (metric suffix, counter?, help)
_VARZ: dict[str, tuple[str, bool, str]] = {
    "connections": ("connections", False, "Current client connections"),
    "total_connections": ("total_connections", True, "Client connections since start"),
    "subscriptions": ("subscriptions", False, "Current subscriptions"),
    "slow_consumers": ("slow_consumers", True, "Slow consumers since start"),
    "in_msgs": ("in_msgs", True, "Messages received"),
    "out_msgs": ("out_msgs", True, "Messages sent"),
    "in_bytes": ("in_bytes", True, "Bytes received"),
    "out_bytes": ("out_bytes", True, "Bytes sent"),
    "mem": ("mem", False, "Resident memory, bytes"),
    "cpu": ("cpu", False, "CPU use, percent"),
    "routes": ("routes", False, "Cluster routes"),
}
_JSZ: dict[str, tuple[str, str]] = {
    "streams": ("streams", "JetStream streams"),
    "consumers": ("consumers", "JetStream consumers"),
    "messages": ("messages", "Messages stored in JetStream"),
    "bytes": ("bytes", "Bytes stored in JetStream"),
}


def varz_metrics(varz: dict[str, Any], jsz: dict[str, Any], server: str) -> list[Metric]:
    """The metric families of one server's ``/varz`` and ``/jsz`` (pure)."""
    out: list[Metric] = []
    for field, (suffix, counter, doc) in _VARZ.items():
        value = varz.get(field)
        if not isinstance(value, (int, float)):
            continue
        # Gauges even for the running totals: the exporter's series are named without the `_total` a
        # Prometheus counter family would add, and dashboards query those names (rate() works on both).
        fam = GaugeMetricFamily(
            f"gnatsd_varz_{suffix}", doc + (" (running total)" if counter else ""), labels=["server_id"]
        )
        fam.add_metric([server], float(value))
        out.append(fam)
    for field, (suffix, doc) in _JSZ.items():
        value = jsz.get(field)
        if isinstance(value, (int, float)):
            fam = GaugeMetricFamily(f"gnatsd_jsz_{suffix}", doc, labels=["server_id"])
            fam.add_metric([server], float(value))
            out.append(fam)
    return out


class NatsCollector(Collector):
    def __init__(self, monitor: str, timeout: float = 2.0) -> None:
        self.base = f"http://{monitor}"
        self.timeout = timeout

    def _get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=self.timeout) as r:
            body = json.loads(r.read())
        return body if isinstance(body, dict) else {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("nats_up", "1 when nats-server's monitoring endpoint answered")
        try:
            varz, jsz = self._get("/varz"), self._get("/jsz")
        except (OSError, ValueError):
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from varz_metrics(varz, jsz, str(varz.get("server_id", "")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m localcluster.natsexporter", description=__doc__.split("\n")[0]
    )
    p.add_argument("--monitor", required=True, help="nats-server's monitoring host:port")
    p.add_argument("--listen", default="127.0.0.1:7777", help="host:port to serve /metrics on")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(NatsCollector(args.monitor))
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
