"""The DNS server's sockets: UDP and TCP on every listen address (the I/O edge around the Responder).

UDP uses the socket directly (``loop.add_reader``) and drains up to :data:`UDP_BATCH` datagrams per
wake-up: one event-loop turn per datagram, as asyncio's datagram transport does, would cost more
than answering from the cache. Sends are non-blocking; an answer that does not fit the socket
buffer is dropped and counted (the client retries, as with any lost datagram). Forwarded queries
run as tasks, so a slow upstream never holds up other clients.

TCP (RFC 7766): length-prefixed messages, several per connection, answered in order; a connection
idle for ``tcp_idle_s`` is closed, and beyond ``max_tcp`` open connections new ones are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from typing import Any

import dns.edns

from services.dns.answer import Drop, Forward, Reply, Responder
from services.dns.forward import Forwarder
from services.dns.metrics import DnsMetrics

__all__ = ["UDP_BATCH", "DnsServer"]

log = logging.getLogger("nodemesh.dns.server")
UDP_BATCH = 64
_RCVBUF = 4 << 20
_BIND_TRIES = 20


class DnsServer:
    def __init__(
        self,
        responder: Responder,
        forwarder: Forwarder,
        metrics: DnsMetrics,
        *,
        max_tcp: int = 256,
        tcp_idle_s: float = 10.0,
    ) -> None:
        self.responder = responder
        self.forwarder = forwarder
        self.metrics = metrics
        self.max_tcp = max_tcp
        self.tcp_idle_s = tcp_idle_s
        self.addresses: list[tuple[str, int]] = []
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_open = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self, listen: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Bind UDP and TCP on each (host, port); port 0 picks one free for both. Returns the bound ones."""
        self._loop = asyncio.get_running_loop()
        for host, port in listen:
            self.addresses.append(await self._bind(host, port))
        return self.addresses

    async def stop(self) -> None:
        assert self._loop is not None
        for s in self._udp:
            self._loop.remove_reader(s.fileno())
            s.close()
        for srv in self._tcp:
            srv.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for srv in self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 2)
        self._udp.clear()
        self._tcp.clear()

    async def _bind(self, host: str, port: int) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(_BIND_TRIES):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                udp.bind((host, port))
                bound = int(udp.getsockname()[1])
                udp.setblocking(False)
                tcp = await asyncio.start_server(self._tcp_client, host, bound, reuse_address=True)
            except OSError as e:
                udp.close()
                if port == 0 and e.errno == errno.EADDRINUSE:
                    continue  # the TCP twin of a free UDP port was taken: pick another
                raise
            assert self._loop is not None
            self._loop.add_reader(udp.fileno(), self._udp_ready, udp)
            self._udp.append(udp)
            self._tcp.append(tcp)
            log.info("listening on %s port %d (udp, tcp)", host, bound)
            return host, bound
        raise OSError(errno.EADDRINUSE, f"no free port for both UDP and TCP on {host}")

    # --- UDP ------------------------------------------------------------------------------------
    def _udp_ready(self, sock: socket.socket) -> None:
        handle = self.responder.handle
        answered = self.metrics.answered
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. a queued ICMP error: the next datagram is still fine
                log.debug("udp recv: %s", e)
                continue
            started = time.perf_counter()
            try:
                out = handle(data, False)
            except Exception:  # a bug must cost one query, never the server
                log.exception("answering a UDP query failed")
                self.metrics.bad.labels(reason="internal").inc()
                continue
            if type(out) is Reply:
                self._send(sock, out.wire, addr)
                if out.bad:
                    self.metrics.bad.labels(reason=out.bad).inc()
                answered("udp", out.rcode, "cache" if out.cached else "zone", time.perf_counter() - started)
            elif type(out) is Forward:
                self._spawn(self._forward_udp(sock, out, addr, started))
            else:
                assert isinstance(out, Drop)
                self.metrics.bad.labels(reason=out.reason).inc()

    def _send(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        try:
            sock.sendto(wire, addr)
        except OSError:  # buffer full or the client's address vanished: as if the datagram was lost
            self.metrics.send_errors.labels(transport="udp").inc()

    async def _forward_udp(self, sock: socket.socket, fwd: Forward, addr: Any, started: float) -> None:
        wire, rcode, source = await self._forward(fwd, False)
        if sock.fileno() >= 0:
            self._send(sock, wire, addr)
        self.metrics.answered("udp", rcode, source, time.perf_counter() - started)

    async def _forward(self, fwd: Forward, tcp: bool) -> tuple[bytes, int, str]:
        answer, why = await self.forwarder.forward(fwd.query, fwd.wire, tcp)
        if answer is not None:
            rcode = answer[3] & 0x0F  # the header's RCODE field (extended bits live in EDNS; rare)
            return answer, rcode, "forward"
        self.metrics.forward_failures.labels(reason=why).inc()
        text = {
            "no_upstream": "no upstream resolvers configured",
            "timeout": "upstream resolvers did not answer in time",
            "error": "upstream resolvers unreachable",
            "overload": "too many queries waiting for upstream resolvers",
        }[str(why)]
        reply = self.responder.servfail(fwd.query, text, dns.edns.EDECode.NO_REACHABLE_AUTHORITY)
        return reply.wire, reply.rcode, "error"

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- TCP ------------------------------------------------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_open >= self.max_tcp:
            self.metrics.bad.labels(reason="tcp_limit").inc()
            writer.close()
            return
        self._tcp_open += 1
        self.metrics.tcp_connections.set(self._tcp_open)
        try:
            await self._tcp_serve(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away or idled out
        except Exception:
            log.exception("TCP client failed")
            self.metrics.bad.labels(reason="internal").inc()
        finally:
            self._tcp_open -= 1
            self.metrics.tcp_connections.set(self._tcp_open)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tcp_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(self.tcp_idle_s):
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
            started = time.perf_counter()
            out = self.responder.handle(data, True)
            if type(out) is Reply:
                if out.bad:
                    self.metrics.bad.labels(reason=out.bad).inc()
                wire, rcode, source = out.wire, out.rcode, "cache" if out.cached else "zone"
            elif type(out) is Forward:
                wire, rcode, source = await self._forward(out, True)
            else:
                assert isinstance(out, Drop)
                self.metrics.bad.labels(reason=out.reason).inc()
                return  # not DNS: close the connection
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            self.metrics.answered("tcp", rcode, source, time.perf_counter() - started)
