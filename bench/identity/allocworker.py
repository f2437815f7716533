"""One allocator process of ``bench.identity`` (a module of its own so spawned workers import it)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from nodemesh.bus import connect
from nodemesh.kvmirror import KvMirror
from services.identity.allocator import BATCH_IDENTITIES, Allocator, identity_type_for

# Each allocator is its own process (as each replica is), with its own mirror of the bucket.
# (name, in flight, trust a mirror miss, every set raced by 2, atomic batches)
MODES = [
    ("A fetch on miss, 1 in flight", 1, False, False, False),
    ("B fetch on miss, 64 in flight", 64, False, False, False),
    ("C trust mirror miss, 64 in flight (default)", 64, True, False, False),
    ("D = C, every set raced by 2 allocators", 64, True, True, False),
    ("E atomic batches of 250, 4 in flight", 4, True, False, True),
    ("F = E, every set raced by 2 allocators", 4, True, True, True),
]


async def _worker_main(
    url: str, sets: list[list[str]], inflight: int, trust: bool, batch: bool, seed: int, go: Any, ready: Any
) -> Any:
    b = await connect(url, name=f"bench-alloc-{seed}", max_wait=10)
    b.js._timeout = 60.0  # a loaded 2-core machine queues requests; a timeout here is not a result
    m: KvMirror[Any] = KvMirror(b, "identities", identity_type_for)
    await m.start()
    await m.synced.wait()
    a = Allocator(m, rng=random.Random(seed * 7919 + len(sets)))
    a.trust_mirror_miss = trust
    sem = asyncio.Semaphore(inflight)
    got: dict[str, int] = {}

    async def one(s: list[str]) -> None:
        async with sem:
            ident, _ = await a.allocate(s)
            got[s[0]] = ident.id

    async def batches(part: list[list[str]]) -> None:
        for i in range(0, len(part), BATCH_IDENTITIES):
            chunk = part[i : i + BATCH_IDENTITIES]
            for s, ident in zip(chunk, await a.allocate_batch(chunk), strict=True):
                got[s[0]] = ident.id

    if batch:
        await a.enable_batching()
    ready.put(seed)  # mirror synced: the parent starts everyone together
    go.wait()
    t0 = time.time()
    if batch:
        await asyncio.gather(*(batches(sets[k::inflight]) for k in range(inflight)))
    else:
        await asyncio.gather(*(one(s) for s in sets))
    t1 = time.time()
    await m.stop()
    await b.nc.close()
    return t0, t1, got


def _worker(args: tuple[Any, ...]) -> Any:
    return asyncio.run(_worker_main(*args))
