"""The access log service over real gRPC and a real nats-server: flows out, bad input counted, stream kept."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, generate_latest

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.config import ServiceConfig
from nodemesh.messages.flow import Flow
from nodemesh.runtime import Service, run_service
from services.datapath.accesslog.convert import no_enrich
from services.datapath.accesslog.server import (
    MAX_ENTRY_BYTES,
    MAX_MESSAGE_BYTES,
    AccessLogServer,
    bus_publisher,
    listen_address,
    start_configured,
)
from testkit.accesslog_entries import entry, message
from testkit.natsserver import NatsServer
from testkit.promscrape import total
from tests.xds.envoy_fixtures import eventually

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


@pytest.fixture
async def server(bus: Bus) -> AsyncIterator[tuple[AccessLogServer, CollectorRegistry]]:
    reg = CollectorRegistry()
    s = AccessLogServer("node-1", bus_publisher(bus), reg, no_enrich)
    await s.start(0)
    try:
        yield s, reg
    finally:
        await s.stop(0)


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


async def test_bad_messages_are_counted_and_the_stream_goes_on(
    server: tuple[AccessLogServer, CollectorRegistry], bus: Bus
) -> None:
    s, reg = server
    got: list[Flow] = []

    async def on_flow(f: Flow, _m: Msg) -> None:
        got.append(f)

    await bus.subscribe(subjects.flows("node-1"), Flow, on_flow)
    await bus.nc.flush()
    huge_entry = entry(path="/" + "x" * (MAX_ENTRY_BYTES + 10))
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        call = ch.stream_unary(METHOD, request_serializer=None, response_deserializer=None)(requests())
        await queue.put(message(entry(path="/first"), node="node-1").SerializeToString())
        await queue.put(b"\xff\xff\xff\xff\xff")  # not a protobuf: truncated varint tag
        await queue.put(b"\x0a" + b"\x80" * 11)  # a field length that never ends
        await queue.put(message(huge_entry, entry(path="/kept-next-to-huge")).SerializeToString())
        await queue.put(b"\x00" * (MAX_MESSAGE_BYTES + 1))  # oversized message, dropped unparsed
        await queue.put(message(entry(path="/last", code=503)).SerializeToString())

        async def all_flows() -> bool:
            return len(got) == 6

        await eventually(all_flows, 30, "3 entries → 6 flows")
        # The stream is still open after all that: one more good message goes through.
        await queue.put(message(entry(path="/after", code=404)).SerializeToString())

        async def seven() -> bool:
            return len(got) == 8

        await eventually(seven, 30, "the stream survived the bad messages")
        await queue.put(None)
        resp = await call
        assert resp == als_pb2.StreamAccessLogsResponse().SerializeToString()

    urls = [f.l7.http.url for f in got if f.l7 and f.l7.http and f.l7.type == "REQUEST"]
    assert urls == [
        "http://example.com/first",
        "http://example.com/kept-next-to-huge",
        "http://example.com/last",
        "http://example.com/after",
    ]
    assert sample(reg, "nodemesh_accesslog_entries_dropped_total", reason="decode") == 2
    assert sample(reg, "nodemesh_accesslog_entries_dropped_total", reason="oversized") == 2
    assert sample(reg, "nodemesh_accesslog_entries_total") == 4
    text = generate_latest(reg).decode()
    labels = {
        "method": "GET",
        "protocol": "HTTP/1.1",
        "reporter": "server",
        "source": "reserved:world",
        "destination": "reserved:world",
        "traffic_direction": "ingress",
    }
    assert total(text, "hubble_http_requests_total", **labels, status="200") == 2
    assert total(text, "hubble_http_requests_total", **labels, status="503") == 1
    assert total(text, "hubble_http_responses_total", status="404", method="GET") == 1
    # every L7 flow (request and response) counts in hubble_flows_processed_total, as Hubble counts it
    l7 = {"type": "L7", "subtype": "HTTP", "protocol": "HTTP"}
    assert total(text, "hubble_flows_processed_total", **l7) == 2 * 4
    assert sample(reg, "nodemesh_accesslog_streams") == 0


async def test_second_server_on_a_taken_port_is_a_clear_error(
    server: tuple[AccessLogServer, CollectorRegistry], bus: Bus
) -> None:
    s, _ = server
    other = AccessLogServer("node-1", bus_publisher(bus), CollectorRegistry(), no_enrich)
    try:
        with pytest.raises(OSError, match="cannot bind access log service"):
            await other.start(s.port)
    finally:
        await other.stop(0)


async def test_start_accesslog_in_a_service_exports_metrics_and_stops_with_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """What the datapath app does: the service's /metrics shows the counts; stop closes the socket."""
    cfg = ServiceConfig(nats_url=nats_server.url, health_addr="127.0.0.1:0")
    sock = str(tmp_path / "als.sock")
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    async def main(svc: Service) -> None:
        # The datapath's default setting: "" = <data dir>/als.sock.
        holder["als"] = await start_configured(svc, "node-1", "", str(tmp_path), no_enrich)
        holder["svc"] = svc

    task = asyncio.create_task(run_service("datapath", cfg, main, install_signals=False, stop=stop))
    try:
        await eventually(lambda: _true("svc" in holder and holder["svc"].health_port > 0), 30, "started")
        svc: Service = holder["svc"]
        assert holder["als"] is not None
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            send = ch.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
            raws = [message(entry(code=c)).SerializeToString() for c in (200, 200, 500)]
            await send(iter([*raws, b"\xff\xff"]))

        async def scraped() -> bool:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{svc.health_port}/metrics") as r,
            ):
                text = await r.text()
            return (
                total(text, "hubble_http_responses_total", status="200") == 2
                and total(text, "hubble_http_responses_total", status="500") == 1
                and total(text, "nodemesh_accesslog_entries_dropped_total", reason="decode") == 1
                and total(text, "hubble_flows_processed_total", type="L7", verdict="FORWARDED") == 2 * 3
                and "_created" not in text  # no *_created series (Hubble exports none)
            )

        await eventually(scraped, 30, "counts on the service's /metrics")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    assert not os.path.exists(sock)  # noqa: ASYNC240 (a stat in a test)
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        send = ch.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError):
            await send(iter([message(entry()).SerializeToString()]), timeout=2)


async def test_a_socket_path_too_long_is_a_clear_error(bus: Bus) -> None:
    s = AccessLogServer("node-1", bus_publisher(bus), CollectorRegistry(), no_enrich)
    with pytest.raises(OSError, match="path too long"):
        await s.start(socket_path="/tmp/" + "x" * 120)
    await s.stop(0)


async def _true(v: bool) -> bool:
    return v


def test_listen_address_setting() -> None:
    assert listen_address("", "/d/nodes/node-1") == (0, "/d/nodes/node-1/als.sock")
    assert listen_address("off", "/d") is None
    assert listen_address("9123", "/d") == (9123, "")
    assert listen_address(":9123", "/d") == (9123, "")
    assert listen_address("127.0.0.1:9123", "/d") == (9123, "")
    assert listen_address("unix:/run/als.sock", "/d") == (0, "/run/als.sock")
    for bad in ("0.0.0.0:9123", "10.0.0.1:80", "port", "70000", "127.0.0.1:"):
        with pytest.raises(ValueError, match="accesslog"):
            listen_address(bad, "/d")


async def test_a_receiver_that_cannot_bind_is_skipped_not_fatal(nats_server: NatsServer) -> None:
    cfg = ServiceConfig(nats_url=nats_server.url, health_addr="127.0.0.1:0")
    got: dict[str, Any] = {}
    stop = asyncio.Event()

    async def main(svc: Service) -> None:
        got["als"] = await start_configured(svc, "node-1", "unix:/" + "x" * 200, "", no_enrich)
        stop.set()

    assert await run_service("datapath", cfg, main, install_signals=False, stop=stop) == 0
    assert got == {"als": None}
