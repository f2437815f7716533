"""A misbehaving API (garbage lines, malformed objects, HTTP errors) never stops the watcher's sync."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from nodemesh.kinds import by_kind
from services.watcher.kube import KubeClient
from services.watcher.metrics import WatcherMetrics
from services.watcher.sync import KindSync
from testkit.natsserver import free_port
from tests.localapi.helpers import until

CM = by_kind("ConfigMap")


def cm(name: str, rv: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "uid": f"u-{name}", "resourceVersion": rv},
    }


class RecordingPublisher:
    def __init__(self) -> None:
        self.known: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.events: list[tuple[str, str]] = []

    async def upsert(self, kind: Any, obj: dict[str, Any]) -> None:
        self.events.append(("upsert", obj["metadata"]["name"]))

    async def delete(self, kind: Any, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"]))


async def test_garbage_from_the_api_is_skipped() -> None:
    watches = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal watches
        if request.query.get("watch") != "true":
            items = [{"no": "metadata"}, "a string", cm("good", "3")]
            return web.json_response(
                {"kind": "ConfigMapList", "metadata": {"resourceVersion": "5"}, "items": items}
            )
        watches += 1
        if watches == 1:
            return web.Response(status=500, text="<html>proxy error</html>")  # not even a Status
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in [
            b"{not json",
            json.dumps({"type": "ADDED", "object": "str"}).encode(),
            json.dumps({"type": "ADDED", "object": {"metadata": {}}}).encode(),
            json.dumps({"type": "WEIRD", "object": cm("x", "6")}).encode(),
            json.dumps({"type": "ERROR", "object": "not a status"}).encode()
            if watches == 2
            else json.dumps({"type": "ADDED", "object": cm("later", "7")}).encode(),
        ]:
            await resp.write(line + b"\n")
        await asyncio.sleep(0.5 if watches > 2 else 0)
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/configmaps", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    kube = KubeClient.from_settings(f"http://127.0.0.1:{port}")
    pub = RecordingPublisher()
    sync = KindSync(kube, CM, pub, WatcherMetrics())  # type: ignore[arg-type]
    try:
        rv = await sync.initial()
        assert rv == "5" and pub.events == [("upsert", "good")]
        task = asyncio.create_task(sync.run(rv))
        await until(lambda: ("upsert", "later") in pub.events, 30, "a good event after the garbage")
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        kube.close()
        await runner.cleanup()
