"""Run watchers (in-process or as processes) against a real nats-server and the local API server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from localcluster.apiserver.app import LocalApi
from nodemesh.bus import Bus
from nodemesh.k8scache import K8sCache
from nodemesh.lease import LeaseRecord
from nodemesh.runtime import Service, run_service
from nodemesh.streams import BUCKET_LEASES, LEASE_WATCHER
from services.watcher.app import main as watcher_main
from services.watcher.config import WatcherConfig
from tests.localapi.helpers import until

State = dict[tuple[str, str, str], tuple[str, str]]
ROOT = Path(__file__).resolve().parents[2]


def api_state(api: LocalApi) -> State:
    return {
        (kind, o["metadata"].get("namespace", ""), o["metadata"]["name"]): (
            o["metadata"]["uid"],
            o["metadata"]["resourceVersion"],
        )
        for kind, o in api.store.all_objects()
    }


def cache_state(cache: K8sCache) -> State:
    return {
        (kind, ns, name): (o["metadata"]["uid"], o["metadata"]["resourceVersion"])
        for kind, objs in cache.store.items()
        for (ns, name), o in objs.items()
    }


async def converged(api: LocalApi, cache: K8sCache, timeout: float = 30.0) -> None:
    """Wait until the cache holds exactly the API server's objects; on timeout show the difference."""
    try:
        await until(lambda: api_state(api) == cache_state(cache), timeout, "cache == API objects")
    except AssertionError:
        a, c = api_state(api), cache_state(cache)
        diff = {k: (a.get(k), c.get(k)) for k in set(a) | set(c) if a.get(k) != c.get(k)}
        raise AssertionError(f"cache differs from the API: {diff}") from None


class InProcessWatcher:
    def __init__(self, nats_url: str, api_url: str, watcher_id: str, **kw: Any) -> None:
        self.cfg = WatcherConfig(nats_url=nats_url, api_url=api_url, watcher_id=watcher_id, **kw)
        self.stop_event = asyncio.Event()
        self.svc: Service | None = None
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> InProcessWatcher:
        async def main(svc: Service) -> None:
            self.svc = svc
            await watcher_main(svc)

        self.task = asyncio.create_task(
            run_service("watcher", self.cfg, main, install_signals=False, stop=self.stop_event)
        )
        await until(lambda: self.svc is not None and self.svc.ready, 60, "watcher ready")
        return self

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        assert self.svc is not None
        return float(self.svc.registry.get_sample_value(name, labels or {}) or 0.0)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            assert await asyncio.wait_for(self.task, 30) == 0


class ProcessWatcher:
    """A watcher as its own OS process, so a test can SIGKILL it (no graceful lease release)."""

    def __init__(self, nats_url: str, api_url: str, watcher_id: str, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "services.watcher",
            "--nats-url",
            nats_url,
            "--api-url",
            api_url,
            "--watcher-id",
            watcher_id,
            "--log-format",
            "text",
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessWatcher:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


async def lease_holder(bus: Bus) -> str:
    kv = await bus.kv(BUCKET_LEASES.name)
    try:
        entry = await kv.get(LEASE_WATCHER)
    except Exception:
        return ""
    return msgspec.json.decode(entry.value or b"", type=LeaseRecord).holder
