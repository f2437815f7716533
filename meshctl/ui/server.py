"""``nodemesh ui``'s HTTP side: the page, its JSON, and the flows it is built from.

:class:`FlowFeed` keeps the newest flows of the JetStream stream FLOWS in a bounded buffer: on start it
reads back up to ``keep`` flows, then follows with an ordered consumer (which re-creates itself after a
NATS reconnect). Flows are kept as plain decoded data (msgpack, untyped), not as the typed message,
so a flow with fields this version does not know still shows; an undecodable message is counted and
skipped.

The server binds 127.0.0.1 by default: it shows the cluster's traffic to whoever reaches it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
from typing import Any

import msgspec
from aiohttp import web
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import MAX_MESSAGE_BYTES
from nodemesh.streams import STREAM_FLOWS

from .page import PAGE
from .servicemap import build_map, flow_row

__all__ = ["FlowFeed", "make_app"]

log = logging.getLogger("nodemesh.ui")


class FlowFeed:
    def __init__(self, bus: Bus, keep: int = 5000) -> None:
        self.bus = bus
        self.flows: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.keep = keep
        self.bad = 0
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def add(self, subject: str, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            self.bad += 1
            return
        try:
            f = msgspec.msgpack.decode(data)  # untyped: fields this version does not know still show
        except msgspec.DecodeError:
            self.bad += 1
            return
        if not isinstance(f, dict):
            self.bad += 1
            return
        if not f.get("node_name"):
            f["node_name"] = subjects.untoken(subject.rsplit(".", 1)[-1])
        self.flows.append(f)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ui-flow-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        js = self.bus.js
        while True:
            try:
                info = await js.stream_info(STREAM_FLOWS.name)
                start = max(info.state.first_seq, info.state.last_seq - self.keep + 1, 1)
                cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
                sub = await js.subscribe(
                    subjects.FLOWS_ALL, stream=STREAM_FLOWS.name, ordered_consumer=True, config=cfg
                )
                backlog = info.state.last_seq
                if backlog < start:
                    self.ready.set()
                async for m in sub.messages:
                    self.add(m.subject, m.data)
                    if not self.ready.is_set() and m.metadata.sequence.stream >= backlog:
                        self.ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away or the stream not there yet: retry, keep what we have
                log.warning("flow feed: %s; retrying", e)
                await asyncio.sleep(1.0)


def _when(f: dict[str, Any]) -> float:
    """The flow's time (RFC 3339 with nanoseconds) as a UNIX timestamp; 0 when unreadable."""
    t = str(f.get("time") or "")
    if "." in t:
        head, _, frac = t.partition(".")
        digits = "".join(c for c in frac if c.isdigit())
        t = f"{head}.{digits[:6]}{frac[len(digits) :]}"
    try:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def make_app(feed: FlowFeed) -> web.Application:
    app = web.Application()

    def _ns_ok(f: dict[str, Any], ns: str) -> bool:
        if not ns:
            return True
        return ns in {(f.get("source") or {}).get("namespace"), (f.get("destination") or {}).get("namespace")}

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def api_map(request: web.Request) -> web.Response:
        try:
            window = max(1.0, float(request.query.get("window", "60")))
        except ValueError:
            raise web.HTTPBadRequest(text="window: seconds") from None
        flows = list(feed.flows)
        newest = max((_when(f) for f in flows[-200:]), default=0.0)
        recent = [f for f in flows if _when(f) >= newest - window] if newest else flows
        return web.json_response(build_map(recent, request.query.get("namespace", ""), window))

    async def api_flows(request: web.Request) -> web.Response:
        ns, verdict = request.query.get("namespace", ""), request.query.get("verdict", "").upper()
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), feed.keep)
        except ValueError:
            raise web.HTTPBadRequest(text="limit: a number") from None
        rows = []
        for f in reversed(feed.flows):
            if _ns_ok(f, ns) and (not verdict or str(f.get("verdict")) == verdict):
                rows.append(flow_row(f))
                if len(rows) >= limit:
                    break
        return web.json_response(rows)

    async def api_namespaces(_: web.Request) -> web.Response:
        seen = {
            str(ep.get("namespace"))
            for f in feed.flows
            for ep in ((f.get("source") or {}), (f.get("destination") or {}))
            if isinstance(ep, dict) and ep.get("namespace")
        }
        return web.json_response(sorted(seen))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(
            {"flows": len(feed.flows), "undecodable": feed.bad, "ready": feed.ready.is_set()}
        )

    app.router.add_get("/", page)
    app.router.add_get("/api/map", api_map)
    app.router.add_get("/api/flows", api_flows)
    app.router.add_get("/api/namespaces", api_namespaces)

    async def readyz(_: web.Request) -> web.Response:
        # what the local supervisor probes: ready once the backlog of flows is read
        from nodemesh import __version__

        body = {"ready": feed.ready.is_set(), "version": __version__}
        return web.json_response(body, status=200 if feed.ready.is_set() else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
