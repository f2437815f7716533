"""The DNS service end to end: a real nats-server, K8S stream events as the watcher publishes them,
queries over real UDP and TCP sockets, a fake upstream resolver on 127.0.0.x, health and metrics."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from nodemesh.bus import Bus
from testkit.k8sobjects import endpoint, endpoint_slice, namespace, service
from testkit.natsserver import NatsServer
from tests.dns.harness import (
    FakeUpstream,
    Running,
    addresses,
    delete,
    dns_service,
    eventually,
    mark_synced,
    put,
    query,
)

PORTS = [("http", 80, "TCP")]


def loopback() -> str:
    """A 127.0.0.x address of its own for a fake upstream (the whole 127/8 is local)."""
    return f"127.0.{random.randint(60, 250)}.{random.randint(2, 250)}"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = await FakeUpstream(loopback(), {"example.com": ["192.0.2.1"]}).start()
    yield up
    up.stop()


@pytest.fixture
async def running(nats_server: NatsServer, bus: Bus, upstream: FakeUpstream) -> AsyncIterator[Running]:
    for obj in (
        namespace("demo"),
        service("echo-b", ip="10.96.0.20", ports=PORTS),
        service("db", ip=None),
        endpoint_slice("db-1", "db", [endpoint("10.244.1.5", hostname="db-0"), endpoint("10.244.2.6")]),
    ):
        await put(bus, obj)
    async with dns_service(nats_server.url, upstreams=upstream.spec, forward_timeout_s=2.0) as run:
        yield run


async def test_ready_after_sync_and_answers_over_udp_and_tcp(running: Running, bus: Bus) -> None:
    # Before the watcher's Synced marker: not ready, cluster names SERVFAIL (never a cached NXDOMAIN),
    # while names outside the cluster already go upstream.
    assert (await running.get("/readyz"))[0] == 503
    early = await query(running.addr, "echo-b.demo.svc.cluster.local", edns=True)
    assert early.rcode() == dns.rcode.SERVFAIL
    assert [o.code for o in early.options if isinstance(o, dns.edns.EDEOption)] == [
        dns.edns.EDECode.NOT_READY
    ]
    assert addresses(await query(running.addr, "example.com")) == ["192.0.2.1"]

    await mark_synced(bus)

    async def ready() -> bool:
        return (await running.get("/readyz"))[0] == 200

    await eventually(ready, what="ready after sync")
    udp = await query(running.addr, "echo-b.demo.svc.cluster.local")
    assert udp.rcode() == dns.rcode.NOERROR and udp.flags & dns.flags.AA
    assert addresses(udp) == ["10.96.0.20"]
    tcp = await query(running.addr, "_http._tcp.echo-b.demo.svc.cluster.local", "SRV", tcp=True)
    assert addresses(tcp, "SRV") == ["0 100 80 echo-b.demo.svc.cluster.local."]
    assert addresses(await query(running.addr, "db.demo.svc.cluster.local", tcp=True)) == [
        "10.244.1.5",
        "10.244.2.6",
    ]
    assert addresses(await query(running.addr, "db-0.db.demo.svc.cluster.local")) == ["10.244.1.5"]
    nx = await query(running.addr, "nope.demo.svc.cluster.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority
    nodata = await query(running.addr, "echo-b.demo.svc.cluster.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority


async def test_answers_follow_service_and_endpointslice_changes(running: Running, bus: Bus) -> None:
    await mark_synced(bus)
    name = "echo-b.demo.svc.cluster.local"

    async def answer(n: str, want: list[str]) -> bool:
        return addresses(await query(running.addr, n)) == want

    await eventually(lambda: answer(name, ["10.96.0.20"]), what="initial answer")
    await put(bus, service("echo-b", ip="10.96.0.21", ports=PORTS))
    await eventually(lambda: answer(name, ["10.96.0.21"]), what="Service change")

    await put(
        bus, endpoint_slice("db-1", "db", [endpoint("10.244.2.6"), endpoint("10.244.3.7", hostname="db-1")])
    )
    await eventually(lambda: answer("db.demo.svc.cluster.local", ["10.244.2.6", "10.244.3.7"]), what="slice")
    await eventually(lambda: answer("db-1.db.demo.svc.cluster.local", ["10.244.3.7"]), what="new host name")
    gone = await query(running.addr, "db-0.db.demo.svc.cluster.local")
    assert gone.rcode() == dns.rcode.NXDOMAIN

    await put(
        bus, endpoint_slice("db-1", "db", [endpoint("10.244.2.6", ready=False), endpoint("10.244.3.7")])
    )
    await eventually(lambda: answer("db.demo.svc.cluster.local", ["10.244.3.7"]), what="endpoint not ready")

    await delete(bus, service("echo-b"))

    async def nxdomain() -> bool:
        return (await query(running.addr, name, tcp=True)).rcode() == dns.rcode.NXDOMAIN

    await eventually(nxdomain, what="Service delete")


async def test_forwarding_keeps_the_clients_id_and_uses_tcp_for_tcp(
    running: Running, upstream: FakeUpstream
) -> None:
    q = dns.message.make_query("example.com", "A")
    for _ in range(5):
        resp = await dns.asyncquery.udp(q, running.addr[0], timeout=5, port=running.addr[1])
        assert resp.id == q.id and addresses(resp) == ["192.0.2.1"]
    assert upstream.transports == ["udp"] * 5
    assert len(set(upstream.seen_ids)) > 1  # a fresh random ID upstream each time, the client's back
    nx = await query(running.addr, "unknown.example.com", tcp=True)
    assert nx.rcode() == dns.rcode.NXDOMAIN and upstream.transports[-1] == "tcp"


async def test_truncated_upstream_answer_then_tcp(running: Running, upstream: FakeUpstream) -> None:
    upstream.names["many.example.com"] = [f"192.0.2.{i}" for i in range(1, 60)]
    udp = await query(running.addr, "many.example.com")
    assert udp.flags & dns.flags.TC  # passed through: the client retries over TCP …
    tcp = await query(running.addr, "many.example.com", tcp=True)
    assert len(addresses(tcp)) == 59 and not tcp.flags & dns.flags.TC  # … and gets everything


async def _metric(run: Running, line_start: str) -> float:
    _, text = await run.get("/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(line_start):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_servfail_without_upstreams(nats_server: NatsServer, bus: Bus, tmp_path: Path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver lines\nsearch example.net\n")
    await mark_synced(bus)
    async with dns_service(nats_server.url, resolv_conf=str(empty)) as run:
        resp = await query(run.addr, "example.com", edns=True)
        assert resp.rcode() == dns.rcode.SERVFAIL
        ede = [o for o in resp.options if isinstance(o, dns.edns.EDEOption)]
        assert ede and ede[0].code == dns.edns.EDECode.NO_REACHABLE_AUTHORITY
        assert ede[0].text == "no upstream resolvers configured"
        assert (await query(run.addr, "example.com", tcp=True)).rcode() == dns.rcode.SERVFAIL
        assert await _metric(run, 'nodemesh_dns_forward_failures_total{reason="no_upstream"}') == 2


@pytest.mark.parametrize("mode", ["silent", "wrong_id"])
async def test_servfail_when_the_upstream_fails(nats_server: NatsServer, bus: Bus, mode: str) -> None:
    up = await FakeUpstream(loopback(), {"example.com": ["192.0.2.1"]}, mode=mode).start()
    try:
        await mark_synced(bus)
        async with dns_service(nats_server.url, upstreams=up.spec, forward_timeout_s=0.3) as run:
            resp = await query(run.addr, "example.com")
            assert resp.rcode() == dns.rcode.SERVFAIL and up.seen_ids  # asked, then gave up
            assert await _metric(run, 'nodemesh_dns_forward_failures_total{reason="timeout"}') == 1
    finally:
        up.stop()


async def test_upstreams_come_from_resolv_conf(nats_server: NatsServer, bus: Bus, tmp_path: Path) -> None:
    # resolv.conf names only port 53, where a fake upstream needs root: the file names an address
    # nothing answers on (tried, SERVFAIL), then is emptied: followed without a restart.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {loopback()}\n")  # nothing listens there
    await mark_synced(bus)
    async with dns_service(nats_server.url, resolv_conf=str(resolv), forward_timeout_s=0.3) as run:
        assert (await query(run.addr, "example.com")).rcode() == dns.rcode.SERVFAIL
        assert await _metric(run, 'nodemesh_dns_forward_failures_total{reason="no_upstream"}') == 0
        resolv.write_text("# emptied\n")

        async def no_upstream() -> bool:
            await query(run.addr, "example.com")
            return await _metric(run, 'nodemesh_dns_forward_failures_total{reason="no_upstream"}') > 0

        await eventually(no_upstream, what="resolv.conf re-read")


async def test_malformed_packets_are_counted_and_never_stop_it(running: Running, bus: Bus) -> None:
    await mark_synced(bus)
    await eventually(lambda: _is_ready(running))
    host, port = running.addr
    good = dns.message.make_query("echo-b.demo.svc.cluster.local", "A")
    replies = await asyncio.to_thread(_udp_junk, host, port, good)
    assert addresses(dns.message.from_wire(replies[-1])) == ["10.96.0.20"]
    formerr = [dns.message.from_wire(d) for d in replies[:-1]]
    assert len(formerr) == 3 and all(m.rcode() == dns.rcode.FORMERR for m in formerr)

    # TCP: a length that promises more than is sent, then a zero-length message, then garbage
    for payload in (b"\x00\x10abc", b"\x00\x00", b"\x00\x05\xff\xff\xff\xff\xff"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        writer.write_eof()
        await reader.read()  # closed (or a FORMERR), never a hang
        writer.close()
    assert addresses(await query(running.addr, "echo-b.demo.svc.cluster.local", tcp=True)) == ["10.96.0.20"]
    # UDP: 3 shorter than a header, 2 unparseable; TCP: 2 shorter than a header
    assert await _metric(running, 'nodemesh_dns_bad_queries_total{reason="malformed"}') == 7
    assert await _metric(running, 'nodemesh_dns_bad_queries_total{reason="oversized"}') == 1
    assert await _metric(running, 'nodemesh_dns_bad_queries_total{reason="not_a_query"}') == 1


def _udp_junk(host: str, port: int, good: dns.message.Message) -> list[bytes]:
    """Junk, an answer, then a good query from a plain socket; every reply up to the good one's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        five_questions = b"\x12\x34\x01\x00" + b"\x00\x05" * 4 + b"\xff" * 288
        for junk in (b"", b"\x00", b"\xff" * 11, good.to_wire()[:-2], five_questions, b"\x00" * 20000):
            s.sendto(junk, (host, port))
        response = dns.message.make_response(good).to_wire()
        s.sendto(response, (host, port))  # an answer sent to a server: dropped, never answered
        s.sendto(good.to_wire(), (host, port))
        replies = []
        while True:
            data = s.recv(65535)
            replies.append(data)
            if dns.message.from_wire(data).id == good.id and len(data) > 40:
                return replies


async def test_metrics_count_queries_by_rcode_with_latency(running: Running, bus: Bus) -> None:
    await mark_synced(bus)
    await eventually(lambda: _is_ready(running))
    for _ in range(3):
        await query(running.addr, "echo-b.demo.svc.cluster.local")
    await query(running.addr, "nope.demo.svc.cluster.local", tcp=True)
    ok = await _metric(running, 'nodemesh_dns_queries_total{rcode="NOERROR",source="cache",transport="udp"}')
    ok += await _metric(running, 'nodemesh_dns_queries_total{rcode="NOERROR",source="zone",transport="udp"}')
    assert ok == 3
    assert (
        await _metric(running, 'nodemesh_dns_queries_total{rcode="NXDOMAIN",source="zone",transport="tcp"}')
        == 1
    )
    assert await _metric(running, 'nodemesh_dns_request_duration_seconds_count{transport="udp"}') == 3
    assert await _metric(running, "nodemesh_dns_zone_names") > 0


async def _is_ready(run: Running) -> bool:
    return (await run.get("/readyz"))[0] == 200
