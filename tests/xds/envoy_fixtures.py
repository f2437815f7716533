"""Fixtures shared by the real-Envoy tests: HTTP backends, an ADS server with its ACK relay, HTTP probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from conformance.envoy import Envoy
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.xds import XdsAck
from services.xds.acks import AckEvent, Sent
from services.xds.bootstrap import render_bootstrap
from services.xds.cache import SnapshotCache
from services.xds.publish import AckRelay
from services.xds.server import AdsServer, Hooks
from testkit.natsserver import free_port


class Backends:
    """Plain HTTP servers on 127.0.0.1 that answer with their own name."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    async def add(self, name: str) -> int:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners.append(runner)
        self.ports[name] = port
        return port

    async def close(self) -> None:
        for r in self._runners:
            await r.cleanup()


@dataclass
class Xds:
    """An ADS server on a fixed port (so it can be restarted there), relaying ACKs to NATS."""

    bus: Bus
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    port: int = field(default_factory=free_port)
    sent: list[Sent] = field(default_factory=list)
    events: list[AckEvent] = field(default_factory=list)
    acks: asyncio.Queue[XdsAck] = field(default_factory=asyncio.Queue)
    server: AdsServer | None = None
    relay: AckRelay | None = None

    async def start(self) -> None:
        self.relay = AckRelay(self.bus)
        base = self.relay.hooks()

        def on_sent(s: Sent) -> None:
            self.sent.append(s)
            base.on_sent(s)

        def on_ack(e: AckEvent) -> None:
            self.events.append(e)
            base.on_ack(e)

        hooks = Hooks(
            on_sent=on_sent,
            on_ack=on_ack,
            on_stream=base.on_stream,
            on_stale=base.on_stale,
            on_fresh=base.on_fresh,
        )
        self.server = AdsServer(self.cache, hooks)
        await self.server.start(f"127.0.0.1:{self.port}")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    async def subscribe_acks(self) -> None:
        async def on_ack(msg: XdsAck, _: object) -> None:
            await self.acks.put(msg)

        await self.bus.subscribe(subjects.xds_ack("*"), XdsAck, on_ack)
        await self.bus.nc.flush()

    def envoy(self, node: str, *, delta: bool) -> Envoy:
        return Envoy(render_bootstrap(node, "127.0.0.1", self.port, 0, delta=delta), name=f"envoy@{node}")

    def sent_of(self, type_url: str, since: int = 0) -> list[Sent]:
        return [s for s in self.sent[since:] if s.type_url == type_url]


async def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(url) as r,
    ):
        return r.status, await r.text()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``check`` until it holds (generous timeout; no timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s: {what}")


async def serves(url: str, body: str, timeout: float = 30.0) -> None:
    async def check() -> bool:
        status, text = await http_get(url)
        return status == 200 and text == body

    await eventually(check, timeout, f"{url} → {body}")
