"""Measure the watcher: initial sync of 2000 objects and SIGKILL failover time.

Run: ``.venv/bin/python -m tests.watcher.measure`` (not part of the test suite).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from localcluster.apiserver.app import LocalApi
from nodemesh.bus import connect
from nodemesh.k8scache import K8sCache
from nodemesh.kinds import by_kind
from nodemesh.streams import provision
from testkit.natsserver import NatsServer
from tests.watcher.harness import InProcessWatcher, ProcessWatcher, api_state, cache_state, lease_holder


async def main():
    with NatsServer() as ns:
        d = tempfile.mkdtemp()
        api = LocalApi(d, nodes=1, controllers=False)
        await api.start()
        CM = by_kind("ConfigMap")
        N = 2000
        for i in range(N):
            api.store.create(
                CM, {"metadata": {"name": f"c{i}", "namespace": "default"}, "data": {"k": "v" * 100}}
            )
        bus = await connect(ns.url, name="m", max_wait=10)
        await provision(bus.js)
        t0 = time.monotonic()
        a = ProcessWatcher(ns.url, api.url, "A", Path(d) / "a.log").start()
        cache = K8sCache(bus)
        await cache.start()
        while not (cache.last_marker and cache.applied_seq >= N):
            await asyncio.sleep(0.01)
        t1 = time.monotonic()
        print(f"initial sync of {N} objects (process start → Synced applied): {t1 - t0:.2f}s")
        b = await InProcessWatcher(ns.url, api.url, "B").start()
        api.store.create(CM, {"metadata": {"name": "x", "namespace": "default"}})
        await asyncio.sleep(1)
        tk = time.monotonic()
        a.kill()
        while await lease_holder(bus) != "B":
            await asyncio.sleep(0.02)
        tt = time.monotonic()
        api.store.delete(CM, "default", "c1")
        while api_state(api) != cache_state(cache):
            await asyncio.sleep(0.02)
        tc = time.monotonic()
        print(
            f"SIGKILL → standby holds lease: {tt - tk:.2f}s; → change visible in a consumer: {tc - tk:.2f}s"
        )
        a.close()
        await b.stop()
        await cache.stop()
        await bus.nc.close()
        await api.stop()


if __name__ == "__main__":
    asyncio.run(main())
