"""Helpers for tests that talk to the local API server over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

MERGE = {"Content-Type": "application/merge-patch+json"}


class Client:
    """A thin HTTP client: every call returns (status, decoded JSON body)."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.s = session

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self.s.request(method, self.base + path, data=data, headers=hdrs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body)

    async def put(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body)

    async def patch(
        self, path: str, body: Any, ctype: str = "application/merge-patch+json"
    ) -> tuple[int, Any]:
        return await self.call("PATCH", path, body, {"Content-Type": ctype})

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self.call("DELETE", path)

    async def watch(
        self, path: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Read watch events from ``path`` (with its query) until ``until(events)`` holds."""
        events: list[dict[str, Any]] = []
        async with self.s.get(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            assert r.status == 200, await r.text()
            async for line in r.content:
                if line.strip():
                    events.append(json.loads(line))
                    if until(events):
                        break
        return events


async def until(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``pred`` until it holds (no timing assertions: the timeout only bounds a failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        res = pred()
        if not isinstance(res, bool):
            res = await res
        if res:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.05)


def pod(
    name: str, labels: dict[str, str] | None = None, node: str = "", ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }
