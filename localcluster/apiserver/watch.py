"""Watch streams: fan-out of store events to every open watch, chunked JSON lines, bookmarks, 410.

A watch first gets its backlog — ADDED for the current state (no resourceVersion, or ``0``) or the
kept events after its resourceVersion (410 Expired as an ERROR event when history no longer
reaches back) — then live events. Subscribing and reading the backlog happen with no ``await``
between them, so no event can fall into the gap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from localcluster.apiserver.errors import ApiError, status_object
from localcluster.apiserver.store import Store, WatchEvent
from nodemesh.kinds import Kind

__all__ = ["WatchHub"]

Match = Callable[[dict[str, Any]], bool]


class WatchHub:
    def __init__(self, store: Store, *, bookmark_interval: float = 5.0, queue_size: int = 10_000) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.queue_size = queue_size
        self._queues: set[asyncio.Queue[WatchEvent | None]] = set()
        store.add_listener(self._fanout)

    def _fanout(self, ev: WatchEvent) -> None:
        for q in list(self._queues):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                # A watcher that cannot keep up is cut off; it re-watches from its last RV.
                self._end(q)

    def _end(self, q: asyncio.Queue[WatchEvent | None]) -> None:
        self._queues.discard(q)
        while not q.empty():
            q.get_nowait()
        q.put_nowait(None)

    def close_all(self) -> None:
        for q in list(self._queues):
            self._end(q)

    async def serve(
        self, request: web.Request, kind: Kind, namespace: str, match: Match
    ) -> web.StreamResponse:
        q = request.query
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        try:
            timeout = float(q.get("timeoutSeconds") or 1800)
        except ValueError as e:
            raise ApiError(400, "BadRequest", "timeoutSeconds must be a number") from e
        rv_text = q.get("resourceVersion", "")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        async def send(typ: str, obj: dict[str, Any]) -> None:
            await resp.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

        def relevant(ev: WatchEvent) -> bool:
            return ev.kind == kind.kind and (
                not namespace or ev.obj["metadata"].get("namespace") == namespace
            )

        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue(self.queue_size)
        try:
            if rv_text in ("", "0"):
                start = self.store.rv
                initial = [("ADDED", o) for o in self.store.list(kind, namespace or None)[0] if match(o)]
                backlog: list[WatchEvent] = []
            else:
                start = int(rv_text)
                initial, backlog = [], self.store.events_after(start)
        except ApiError as e:
            await send("ERROR", e.status())
            return resp
        except ValueError:
            await send("ERROR", status_object(400, "BadRequest", f"invalid resourceVersion {rv_text!r}"))
            return resp
        self._queues.add(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for typ, obj in initial:
                await send(typ, obj)
            for ev in backlog:
                await _send_event(send, ev, relevant, match)
            last_bookmark = loop.time()
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                # Wake up at least every few seconds to notice a client that went away.
                wait = min(left, self.bookmark_interval if bookmarks else 5.0)
                try:
                    got: WatchEvent | None = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                else:
                    if got is None:
                        break
                    await _send_event(send, got, relevant, match)
                if bookmarks and queue.empty() and loop.time() - last_bookmark >= self.bookmark_interval:
                    # Queue empty: every event up to store.rv has been sent or filtered out.
                    rv = str(max(start, self.store.rv))
                    await send(
                        "BOOKMARK",
                        {
                            "kind": kind.kind,
                            "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": rv},
                        },
                    )
                    last_bookmark = loop.time()
        except ConnectionError:
            pass
        finally:
            self._queues.discard(queue)
        return resp


async def _send_event(
    send: Callable[[str, dict[str, Any]], Any],
    ev: WatchEvent,
    relevant: Callable[[WatchEvent], bool],
    match: Match,
) -> None:
    if not relevant(ev):
        return
    now_match = match(ev.obj)
    was_match = ev.old is not None and match(ev.old)
    if ev.type == "MODIFIED":
        if now_match and not was_match:
            await send("ADDED", ev.obj)
        elif was_match and not now_match:
            await send("DELETED", ev.obj)  # it left this watch's selection
        elif now_match:
            await send("MODIFIED", ev.obj)
    elif now_match:
        await send(ev.type, ev.obj)
