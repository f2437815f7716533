"""``python -m bench.accesslog``: cost of turning Envoy access log entries into L7 flows.

Two numbers, no baseline to compare with (nothing did this before): ``convert`` alone (pure), and
``AccessLogServer.handle`` on 100-entry messages as Envoy sends them (decode, convert, metrics, two
publishes per entry to a real nats-server). Results: bench/accesslog/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from nodemesh.bus import connect
from nodemesh.messages.flow import Endpoint
from services.datapath.accesslog.convert import convert
from services.datapath.accesslog.server import AccessLogServer, bus_publisher
from testkit.accesslog_entries import entry, message
from testkit.natsserver import NatsServer

PODS = {
    "10.244.1.5": Endpoint(identity=300, namespace="shop", pod_name="web-5d8f7c9b6-abcde"),
    "10.244.2.7": Endpoint(identity=301, namespace="shop", pod_name="echo-0"),
}


def bench_convert(n: int = 20_000) -> float:
    e = entry(path="/api/items/42")
    t = time.perf_counter()
    for _ in range(n):
        convert(e, "node-1", PODS.get)
    return n / (time.perf_counter() - t)


async def bench_handle(batches: int = 200) -> tuple[float, float]:
    with NatsServer() as s:
        bus = await connect(s.url, name="bench")
        srv = AccessLogServer("node-1", bus_publisher(bus), CollectorRegistry(), PODS.get)
        raw = message(*[entry(path=f"/api/{i}") for i in range(100)]).SerializeToString()
        t = time.perf_counter()
        for _ in range(batches):
            await srv.handle(raw)
        await bus.nc.flush()
        rate = batches * 100 / (time.perf_counter() - t)
        await bus.nc.close()
        return rate, len(raw) / 100


def main() -> None:
    for trial in range(3):
        c = bench_convert()
        h, size = asyncio.run(bench_handle())
        print(f"trial {trial}: convert {c:,.0f} entries/s; handle {h:,.0f} entries/s; {size:.0f} B/entry")


if __name__ == "__main__":
    main()
