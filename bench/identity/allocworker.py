"""One allocator process of ``bench.identity`` (a module of its own so spawned workers import it)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from nodemesh.bus import connect
from services.identity.allocator import Allocator, identity_type_for
from services.identity.kvmirror import KvMirror

# Each allocator is its own process (as each replica is), with its own mirror of the bucket.
MODES = [
    ("A fetch on miss, 1 in flight", 1, False, False),
    ("B fetch on miss, 256 in flight", 256, False, False),
    ("C trust mirror miss, 256 in flight (default)", 256, True, False),
    ("D = C, every set raced by 2 allocators", 256, True, True),
]


async def _worker_main(
    url: str, sets: list[list[str]], inflight: int, trust: bool, seed: int, go: Any
) -> Any:
    b = await connect(url, name=f"bench-alloc-{seed}", max_wait=10)
    m: KvMirror[Any] = KvMirror(await b.kv("identities"), "identities", identity_type_for)
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

    go.wait()
    t0 = time.time()
    await asyncio.gather(*(one(s) for s in sets))
    t1 = time.time()
    await m.stop()
    await b.nc.close()
    return t0, t1, got


def _worker(args: tuple[Any, ...]) -> Any:
    return asyncio.run(_worker_main(*args))
