"""K8sCache against a real JetStream: full state on replay, tombstones, the Synced gate."""

from __future__ import annotations

import asyncio

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.k8scache import K8sCache
from nodemesh.messages.k8s import ObjectEvent, Synced


def _pod(name: str, rv: str, typ: str = "upsert") -> ObjectEvent:
    return ObjectEvent(
        type=typ,  # type: ignore[arg-type]
        kind="Pod",
        api_version="v1",
        namespace="default",
        name=name,
        resource_version=rv,
        obj={"metadata": {"name": name, "namespace": "default", "resourceVersion": rv}},
    )


async def _publish(bus: Bus, ev: ObjectEvent) -> int:
    return await bus.js_publish(subjects.k8s_object(ev.kind, ev.namespace, ev.name), ev)


async def test_late_consumer_gets_current_state_and_waits_for_synced(bus: Bus) -> None:
    await _publish(bus, _pod("a", "1"))
    await _publish(bus, _pod("b", "2"))
    await _publish(bus, _pod("a", "3"))  # replaces a@1 in the last-value stream
    await _publish(bus, _pod("b", "4", "delete"))

    seen: list[tuple[str, str]] = []
    cache = K8sCache(bus, kinds=["Pod"], on_change=lambda ev, _prev: seen.append((ev.type, ev.name)))
    await cache.start()
    await asyncio.sleep(0.3)
    # Everything applied, but the watcher has not said its list is complete: not synced.
    assert not cache.synced.is_set()
    assert set(cache.store["Pod"]) == {("default", "a")}
    assert cache.get("Pod", "default", "a")["metadata"]["resourceVersion"] == "3"  # type: ignore[index]
    # The tombstone of b replaces b's upsert in the stream, so b was never seen: no callback for it.
    assert seen == [("upsert", "a")]

    seq = await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="w", epoch=1, stream_seq=4))
    await cache.wait_synced(5)
    assert cache.applied_seq == seq

    # Live changes keep flowing after sync.
    await _publish(bus, _pod("c", "5"))
    for _ in range(100):
        if cache.get("Pod", "default", "c"):
            break
        await asyncio.sleep(0.02)
    assert cache.get("Pod", "default", "c") is not None
    await cache.stop()


async def test_synced_marker_already_in_stream(bus: Bus) -> None:
    await _publish(bus, _pod("a", "1"))
    await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="w", epoch=1, stream_seq=1))
    cache = K8sCache(bus)
    await cache.start()
    await cache.wait_synced(5)
    assert cache.list("Pod") and cache.last_marker is not None
    await cache.stop()


async def test_corrupt_event_is_skipped(bus: Bus) -> None:
    await bus.js.publish(subjects.k8s_object("Pod", "default", "x"), b"\xff\xfe not msgpack")
    await _publish(bus, _pod("y", "2"))
    await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="w", epoch=1, stream_seq=2))
    cache = K8sCache(bus)
    await cache.start()
    await cache.wait_synced(5)
    assert set(cache.store["Pod"]) == {("default", "y")}
    await cache.stop()
