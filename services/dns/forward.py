"""Forwarding names outside the cluster domain to the upstream resolvers (the I/O edge).

The client's query goes upstream byte for byte except its ID, which is replaced by a random one (so
an answer to somebody else's query, or a spoofed one, is not taken for ours); an answer counts only
if it carries that ID, is a response, and repeats the question. The client gets it back, again byte
for byte, with its own ID. Upstreams are tried in resolv.conf order, within one overall time budget
(split evenly between them); UDP clients are forwarded over UDP (a truncated upstream answer goes
back truncated and the client retries over TCP), TCP clients over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Literal

import dns.flags
import dns.message

from services.dns.upstreams import Upstreams

__all__ = ["Failure", "Forwarder"]

Failure = Literal["no_upstream", "timeout", "error", "overload"]


class _Once(asyncio.DatagramProtocol):
    def __init__(self, accept: asyncio.Future[bytes], check: dict[str, object]) -> None:
        self.accept = accept
        self.check = check

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.accept.done() and _is_answer(data, self.check):
            self.accept.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        if not self.accept.done():
            self.accept.set_exception(exc)


def _is_answer(data: bytes, check: dict[str, object]) -> bool:
    try:
        m = dns.message.from_wire(data, question_only=True)
    except Exception:  # garbage from the network is just not our answer
        return False
    return m.id == check["id"] and bool(m.flags & dns.flags.QR) and m.question == check["question"]


class Forwarder:
    def __init__(self, upstreams: Upstreams, timeout: float = 2.0, max_pending: int = 1024) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending = 0

    async def forward(
        self, query: dns.message.Message, wire: bytes, tcp: bool
    ) -> tuple[bytes, None] | tuple[None, Failure]:
        """The upstream's answer with the client's ID, or (None, why it failed)."""
        servers = self.upstreams.current()
        if not servers:
            return None, "no_upstream"
        if self.pending >= self.max_pending:
            return None, "overload"
        self.pending += 1
        try:
            return await self._try_all(servers, query, wire, tcp)
        finally:
            self.pending -= 1

    async def _try_all(
        self, servers: list[tuple[str, int]], query: dns.message.Message, wire: bytes, tcp: bool
    ) -> tuple[bytes, None] | tuple[None, Failure]:
        our_id = secrets.randbits(16)
        out = our_id.to_bytes(2, "big") + wire[2:]
        check: dict[str, object] = {"id": our_id, "question": query.question}
        per_try = self.timeout / len(servers)
        why: Failure = "timeout"
        for server in servers:
            try:
                async with asyncio.timeout(per_try):
                    data = await (self._tcp(server, out, check) if tcp else self._udp(server, out, check))
                return wire[:2] + data[2:], None
            except TimeoutError:
                why = "timeout"
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError):
                why = "error"
        return None, why

    @staticmethod
    async def _udp(server: tuple[str, int], out: bytes, check: dict[str, object]) -> bytes:
        loop = asyncio.get_running_loop()
        accept: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Once(accept, check), remote_addr=server)
        try:
            transport.sendto(out)
            return await accept
        finally:
            transport.close()

    @staticmethod
    async def _tcp(server: tuple[str, int], out: bytes, check: dict[str, object]) -> bytes:
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                if _is_answer(data, check):
                    return data
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
