"""Allocation consistency: racing replicas/allocators, restarts, GC, corrupt KV entries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict

import pytest

from nodemesh import subjects
from nodemesh.bus import Bus, RemoteError, connect
from nodemesh.kvmirror import KvMirror
from nodemesh.labels import label_hash
from nodemesh.messages.identity import AllocateReply, AllocateRequest, IdentityRef, ReleaseRequest
from nodemesh.streams import identity_key, labels_key
from services.identity.allocator import Allocator, identity_type_for
from testkit.natsserver import NatsServer

from .conftest import RunReplica, eventually, identity

LABEL_SETS = [[f"k8s:app=svc-{i}", "k8s:io.kubernetes.pod.namespace=default"] for i in range(30)]


async def _allocator(
    url: str, *, lo: int | None = None, hi: int | None = None, seed: int = 0
) -> tuple[Allocator, Bus]:
    b = await connect(url, name=f"alloc-{seed}", max_wait=10)
    m: KvMirror[object] = KvMirror(b, "identities", identity_type_for)
    await m.start()
    await m.synced.wait()
    a = Allocator(m, rng=random.Random(seed))
    if lo is not None and hi is not None:
        a.lo, a.hi = lo, hi
    return a, b


async def test_racing_allocators_converge_on_one_number_per_label_set(
    nats_server: NatsServer, bus: Bus
) -> None:
    # A tiny number range forces collisions on id.<n> as well as on labels.<hash>.
    allocs = [await _allocator(nats_server.url, lo=256, hi=256 + 60, seed=s) for s in range(4)]
    results: dict[int, set[int]] = defaultdict(set)

    async def one(a: Allocator, i: int, k: int) -> None:
        ident, _ = await a.allocate(LABEL_SETS[i], endpoint=f"node-{k % 3}/default/p-{i}-{k}")
        results[i].add(ident.id)

    await asyncio.gather(*(one(allocs[k % 4][0], i, k) for i in range(30) for k in range(8)))
    assert all(len(ids) == 1 for ids in results.values()), results
    numbers = {i: next(iter(ids)) for i, ids in results.items()}
    assert len(set(numbers.values())) == 30  # no number shared by two label sets
    for i, n in numbers.items():
        stored = await identity(bus, n)
        assert stored is not None and stored.labels == sorted(LABEL_SETS[i])
        assert len(stored.refs) == 8  # every reference was counted, none lost to a CAS race
    # No orphans left behind by the losers: exactly 30 id.* keys.
    keys = await (await bus.kv("identities")).keys()
    assert len([k for k in keys if k.startswith("id.")]) == 30
    for a, b in allocs:
        await a.m.stop()
        await b.nc.close()


async def test_two_replicas_serve_concurrent_allocations(bus: Bus, run_replica: RunReplica) -> None:
    await run_replica()
    await run_replica()
    await eventually(lambda: _ping_count(bus), what="two replicas answering")

    async def alloc(i: int, k: int) -> tuple[int, int]:
        req = AllocateRequest(labels=LABEL_SETS[i], endpoint=f"ext:x-{i}-{k}")
        reply = await bus.request(subjects.IDENTITY_ALLOCATE, req, AllocateReply, timeout=30)
        return i, reply.identity.id

    pairs = await asyncio.gather(*(alloc(i, k) for i in range(20) for k in range(10)))
    by_set: dict[int, set[int]] = defaultdict(set)
    for i, n in pairs:
        by_set[i].add(n)
    assert all(len(v) == 1 for v in by_set.values())
    assert len({next(iter(v)) for v in by_set.values()}) == 20
    # Bad input gets a clear refusal, not a crash.
    with pytest.raises(RemoteError) as ei:
        await bus.request(
            subjects.IDENTITY_ALLOCATE, AllocateRequest(labels=["no-source-or-value"]), AllocateReply
        )
    assert ei.value.code == "400" and "source:key=value" in ei.value.description
    with pytest.raises(RemoteError) as ei:
        await bus.request(
            subjects.IDENTITY_ALLOCATE, AllocateRequest(labels=["k8s:a=" + "x" * 5000]), AllocateReply
        )
    assert ei.value.code == "400" and "max" in ei.value.description
    with pytest.raises(RemoteError) as ei:
        await bus.request(
            subjects.IDENTITY_RELEASE, ReleaseRequest(identity=2, endpoint="ext:x"), AllocateReply
        )
    assert ei.value.code == "400"


async def _ping_count(bus: Bus) -> bool:
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    await bus.nc.publish("$SRV.PING.nodemesh-identity", b"", reply=inbox)
    seen = 0
    try:
        while True:
            await sub.next_msg(timeout=0.3)
            seen += 1
    except Exception:
        pass
    await sub.unsubscribe()
    return seen >= 2


async def test_restart_keeps_numbers(bus: Bus, run_replica: RunReplica) -> None:
    r = await run_replica()
    first = {}
    for i in range(5):
        reply = await bus.request(
            subjects.IDENTITY_ALLOCATE,
            AllocateRequest(labels=LABEL_SETS[i], endpoint=f"ext:p{i}"),
            AllocateReply,
        )
        first[i] = reply.identity.id
        assert reply.created
    assert await r.stop() == 0
    await run_replica()
    for i in range(5):
        reply = await bus.request(
            subjects.IDENTITY_ALLOCATE, AllocateRequest(labels=LABEL_SETS[i]), AllocateReply, timeout=10
        )
        assert reply.identity.id == first[i] and not reply.created


async def test_gc_after_grace_and_never_before(nats_server: NatsServer, bus: Bus) -> None:
    now = [1000.0]
    a, b = await _allocator(nats_server.url)
    a.clock = lambda: now[0]
    used, _ = await a.allocate(LABEL_SETS[0], endpoint="n/default/keep")
    gone, _ = await a.allocate(LABEL_SETS[1], endpoint="n/default/drop")
    await a.remove_ref(gone.id, "n/default/drop")  # unused since t=1000
    now[0] = 1000.0 + 1799.0
    assert await a.gc(1800.0) == []  # one second before the grace: kept
    assert await identity(bus, gone.id) is not None
    again, _ = await a.allocate(LABEL_SETS[1], endpoint="n/default/back")  # reused before GC: same number
    assert again.id == gone.id
    await a.remove_ref(gone.id, "n/default/back")  # unused since t=2799
    now[0] = 2799.0 + 1800.0
    assert await a.gc(1800.0) == [gone.id]
    assert await identity(bus, gone.id) is None and await identity(bus, used.id) is not None
    kv = await bus.kv("identities")
    assert labels_key(label_hash(LABEL_SETS[1])) not in await kv.keys()
    fresh, created = await a.allocate(LABEL_SETS[1], endpoint="n/default/new")
    assert created and fresh.id != used.id
    await a.m.stop()
    await b.nc.close()


async def test_gc_loop_in_service_respects_grace(bus: Bus, run_replica: RunReplica) -> None:
    await run_replica(gc_grace=1.5)
    reply = await bus.request(
        subjects.IDENTITY_ALLOCATE, AllocateRequest(labels=LABEL_SETS[3], endpoint="ext:p"), AllocateReply
    )
    n = reply.identity.id
    released = await bus.request(
        subjects.IDENTITY_RELEASE, ReleaseRequest(identity=n, endpoint="ext:p"), AllocateReply
    )
    unused_since = released.identity.unused_since
    assert unused_since > 0
    await eventually(lambda: _gone(bus, n), what="identity collected")
    # The loop's clock says it deleted no earlier than the grace: the record it deleted had this mark.
    kv = await bus.kv("identities")
    history = await kv.history(identity_key(n))
    assert history[-1].operation == "DEL"
    assert history[-1].created is not None and history[-1].created.timestamp() >= unused_since + 1.5


async def _gone(bus: Bus, n: int) -> bool:
    return await identity(bus, n) is None


async def test_corrupt_entries_are_skipped_and_never_corrupt_the_mapping(
    nats_server: NatsServer, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    kv = await bus.kv("identities")
    a, b = await _allocator(nats_server.url, lo=256, hi=262)
    x, _ = await a.allocate(LABEL_SETS[0], endpoint="n/d/x")
    # Garbage under a free number and under x's label index.
    squatted = next(n for n in range(256, 263) if n != x.id)
    await kv.put(identity_key(squatted), b"\xc1 not msgpack")
    await kv.put(labels_key(label_hash(LABEL_SETS[0])), b"\xff\xfe")
    await eventually(
        lambda: _true(labels_key(label_hash(LABEL_SETS[0])) in a.m.bad), what="mirror saw corruption"
    )
    assert "skipping corrupt KV entry" in caplog.text
    again, created = await a.allocate(LABEL_SETS[0], endpoint="n/d/y")
    assert again.id == x.id and not created  # the index was repaired, not replaced by a new number
    entry = await kv.get(labels_key(label_hash(LABEL_SETS[0])))
    from nodemesh.codec import decode

    assert decode(entry.value or b"", IdentityRef) == IdentityRef(id=x.id)
    others = [(await a.allocate(LABEL_SETS[i]))[0].id for i in range(1, 6)]
    assert squatted not in others and x.id not in others and len(set(others)) == 5
    await a.m.stop()
    await b.nc.close()


async def _true(v: bool) -> bool:
    return v


async def test_atomic_batches_allocate_like_single_allocations(
    nats_server: NatsServer, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodemesh.identity.allocator")
    a, ab = await _allocator(nats_server.url, seed=11)
    b, bb = await _allocator(nats_server.url, seed=12)
    assert await a.enable_batching()
    assert "atomic batch rejected" not in caplog.text
    sets = [[f"k8s:app=batch-{i}", "k8s:io.kubernetes.pod.namespace=default"] for i in range(600)]
    single = await asyncio.gather(*(b.allocate(s) for s in sets[:50]))  # some exist already
    got = await a.allocate_batch(sets)
    assert [g.id for g in got[:50]] == [s[0].id for s in single]
    assert len({g.id for g in got}) == 600 and all(
        g.labels == sorted(s) for g, s in zip(got, sets, strict=True)
    )
    for g in got[50:60]:
        stored = await identity(bus, g.id)
        assert stored is not None and stored.labels == g.labels
    # A batch that conflicts (a number squatted behind a stopped mirror's back) is rejected whole by
    # the server and falls back to one-by-one allocation: same outcome, the squatter is not overwritten.
    await a.m.stop()
    predict = random.Random()
    predict.setstate(a.rng.getstate())
    squatted = predict.randint(a.lo, a.hi)
    kv = await bus.kv("identities")
    await kv.put(identity_key(squatted), b"squatter")
    more = [[f"k8s:app=late-{i}", "k8s:io.kubernetes.pod.namespace=default"] for i in range(20)]
    late = await a.allocate_batch(more)
    assert "atomic batch rejected" in caplog.text and "wrong last sequence" in caplog.text
    assert squatted not in {g.id for g in late} and len({g.id for g in late}) == 20
    assert (await kv.get(identity_key(squatted))).value == b"squatter"
    for g, s in zip(late, more, strict=True):
        assert (await b.allocate(s))[0].id == g.id
    await b.m.stop()
    await ab.nc.close()
    await bb.nc.close()


async def test_lagging_mirror_never_condemns_a_valid_index(nats_server: NatsServer, bus: Bus) -> None:
    """Regression (found by bench mode F): a mirror still holding a number's *previous* identity
    must not make the allocator drop the label index that now (rightly) names that number."""
    from nodemesh.codec import encode
    from nodemesh.messages.identity import Identity

    x, xb = await _allocator(nats_server.url, seed=21)
    y, yb = await _allocator(nats_server.url, seed=22)
    a_ident, _ = await x.allocate(LABEL_SETS[0])
    n = a_ident.id
    await eventually(lambda: _true(y.identity(n) is not None), what="y mirrors A")
    await y.m.stop()  # y's mirror now lags: it keeps believing id.<n> is A
    kv = await bus.kv("identities")
    # Elsewhere: A is collected and n is reused for B (as GC + a new allocation would do).
    await kv.delete(identity_key(n))
    await kv.delete(labels_key(label_hash(LABEL_SETS[0])))
    b_labels = sorted(LABEL_SETS[1])
    await kv.create(identity_key(n), encode(Identity(id=n, labels=b_labels)))
    await kv.create(labels_key(label_hash(b_labels)), encode(IdentityRef(id=n)))
    got, created = await y.allocate(b_labels)
    assert got.id == n and not created
    entry = await kv.get(labels_key(label_hash(b_labels)))
    from nodemesh.codec import decode

    assert decode(entry.value or b"", IdentityRef).id == n  # the index was not dropped
    await x.m.stop()
    await xb.nc.close()
    await yb.nc.close()
