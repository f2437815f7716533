"""The DNS service in-process on real sockets and a real nats-server, fed like the watcher feeds it,
plus a fake upstream resolver (real UDP and TCP) and a dnspython client."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rrset

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.runtime import Service, run_service
from services.dns.app import DnsApp
from services.dns.app import start as dns_start
from services.dns.config import DnsConfig


# --- the K8S stream, as the watcher writes it ------------------------------------------------------
async def put(bus: Bus, obj: dict[str, Any]) -> None:
    meta, kind = obj["metadata"], obj["kind"]
    ns = meta.get("namespace", "") if by_kind(kind).namespaced else ""
    ev = ObjectEvent(
        type="upsert", kind=kind, api_version=obj["apiVersion"], namespace=ns, name=meta["name"], obj=obj
    )
    await bus.js_publish(subjects.k8s_object(kind, ns, meta["name"]), ev)


async def delete(bus: Bus, obj: dict[str, Any]) -> None:
    meta, kind = obj["metadata"], obj["kind"]
    ns = meta.get("namespace", "") if by_kind(kind).namespaced else ""
    ev = ObjectEvent(type="delete", kind=kind, api_version=obj["apiVersion"], namespace=ns, name=meta["name"])
    await bus.js_publish(subjects.k8s_object(kind, ns, meta["name"]), ev)


async def mark_synced(bus: Bus) -> None:
    seq = (await bus.js.stream_info("K8S")).state.last_seq
    await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="test", epoch=1, stream_seq=int(seq)))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``check`` until it holds (a generous bound, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, OSError, dns.exception.DNSException):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s: {what}")


# --- the service -------------------------------------------------------------------------------
@dataclass
class Running:
    svc: Service | None = None
    app: DnsApp | None = None

    @property
    def addr(self) -> tuple[str, int]:
        assert self.app is not None
        return self.app.server.addresses[0]

    async def get(self, path: str) -> tuple[int, str]:
        assert self.svc is not None
        url = f"http://127.0.0.1:{self.svc.health_port}{path}"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.text()


@contextlib.asynccontextmanager
async def dns_service(nats_url: str, **settings: Any) -> AsyncIterator[Running]:
    """One DNS server in-process (the real service runtime); by default on 127.0.0.1, a free port."""
    cfg = DnsConfig(nats_url=nats_url, **{"listen": "127.0.0.1:0", **settings})
    run = Running()

    async def main(svc: Service) -> None:
        run.svc = svc
        run.app = await dns_start(svc)

    stop = asyncio.Event()
    task = asyncio.create_task(run_service("dns", cfg, main, install_signals=False, stop=stop))
    try:
        for _ in range(600):
            if run.app is not None and run.svc is not None and run.svc.health_port:
                break
            if task.done():
                raise AssertionError(f"dns service exited: {task.result()}")
            await asyncio.sleep(0.05)
        yield run
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


# --- a client ------------------------------------------------------------------------------------
async def query(
    addr: tuple[str, int], name: str, rdtype: str = "A", *, tcp: bool = False, edns: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    if tcp:
        return await dns.asyncquery.tcp(q, addr[0], timeout=5, port=addr[1])
    return await dns.asyncquery.udp(q, addr[0], timeout=5, port=addr[1])


def addresses(resp: dns.message.Message, rdtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in resp.answer if rrset.rdtype == t for rd in rrset)


# --- a fake upstream resolver ----------------------------------------------------------------------
@dataclass
class FakeUpstream:
    """Answers A queries from ``names`` over UDP and TCP on (host, port); ``mode`` misbehaves on purpose:
    ``silent`` never answers, ``wrong_id`` answers with another ID."""

    host: str
    names: dict[str, list[str]] = field(default_factory=dict)
    mode: str = "ok"
    port: int = 0
    seen_ids: list[int] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        q = dns.message.from_wire(wire)
        self.seen_ids.append(q.id)
        self.transports.append(transport)
        if self.mode == "silent":
            return None
        resp = dns.message.make_response(q)
        name = q.question[0].name.to_text(omit_final_dot=True).lower()
        ips = self.names.get(name)
        if ips is None:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        else:
            resp.answer.append(dns.rrset.from_text_list(q.question[0].name, 60, "IN", "A", ips))
        if self.mode == "wrong_id":
            resp.id = (q.id + 1) % 65536
        return resp.to_wire(max_size=512 if transport == "udp" else 65535, prefer_truncation=True)

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        outer = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                out = outer.answer(data, "udp")
                if out is not None:
                    self.t.sendto(out, addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    out = outer.answer(await reader.readexactly(size), "tcp")
                    if out is not None:
                        writer.write(len(out).to_bytes(2, "big") + out)
                        await writer.drain()
            writer.close()

        for _ in range(20):
            port = random.randint(20000, 60000)
            try:
                self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, port))
                self._tcp = await asyncio.start_server(tcp, self.host, port)
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                continue
            self.port = port
            return self
        raise OSError("no free port for the fake upstream")

    def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    @property
    def spec(self) -> str:
        return f"{self.host}:{self.port}"
