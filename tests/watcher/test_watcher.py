"""The watcher against a real nats-server and the protocol-level local API server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from localcluster.apiserver.app import LocalApi
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.k8scache import K8sCache
from nodemesh.kinds import KINDS, by_kind
from nodemesh.messages.k8s import ObjectEvent, StatusPatch
from nodemesh.streams import STREAM_K8S
from testkit.natsserver import NatsServer
from tests.localapi.helpers import until
from tests.watcher.harness import InProcessWatcher, ProcessWatcher, converged, lease_holder

CM = by_kind("ConfigMap")
POD = by_kind("Pod")
SPEC = {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}


def cm(name: str, value: str = "1", ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "data": {"v": value}}


def touch(api: LocalApi, name: str, value: str) -> None:
    obj = api.store.get(CM, "default", name)
    obj["data"] = {"v": value}
    api.store.update(CM, obj)


async def last_seq(bus: Bus) -> int:
    return int((await bus.js.stream_info(STREAM_K8S.name)).state.last_seq)


async def test_initial_list_events_synced_and_late_consumer(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    for i in range(5):
        api.store.create(CM, cm(f"c{i}"))
    api.store.create(POD, {"metadata": {"name": "p", "namespace": "default"}, "spec": SPEC})
    w = await InProcessWatcher(nats_server.url, api.url, "w1", list_page_size=2).start()  # lists in pages
    try:
        # A consumer that starts after the watcher's initial list gets the full state, then Synced.
        cache = K8sCache(bus)
        await cache.start()
        await cache.wait_synced(30)
        await converged(api, cache)
        marker = cache.last_marker
        assert marker is not None and marker.watcher == "w1" and marker.epoch == 1
        assert sorted(marker.kinds) == sorted(k.kind for k in KINDS)
        assert cache.get("Pod", "default", "p") is not None
        # Changes after the sync flow through: create, modify, delete.
        api.store.create(CM, cm("new"))
        touch(api, "c1", "2")
        api.store.delete(CM, "default", "c2")
        await converged(api, cache)
        assert cache.get("ConfigMap", "default", "c1")["data"] == {"v": "2"}  # type: ignore[index]
        raw = await bus.js.get_last_msg(STREAM_K8S.name, subjects.k8s_object("ConfigMap", "default", "c2"))
        tomb = decode(raw.data, ObjectEvent)
        assert tomb.type == "delete" and tomb.watcher == "w1"
        assert (
            w.metric("nodemesh_watcher_events_published_total", {"kind": "ConfigMap", "type": "delete"}) == 1
        )
        assert w.metric("nodemesh_watcher_leader") == 1
        await cache.stop()
    finally:
        await w.stop()


async def test_restart_publishes_only_differences_and_tombstones(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    for i in range(4):
        api.store.create(CM, cm(f"c{i}"))
    w = await InProcessWatcher(nats_server.url, api.url, "first").start()
    cache = K8sCache(bus)
    await cache.start()
    await cache.wait_synced(30)
    await converged(api, cache)
    await w.stop()
    assert await lease_holder(bus) == ""  # released on a graceful stop
    before = await last_seq(bus)
    # While no watcher runs: a delete, a change and a create.
    api.store.delete(CM, "default", "c0")
    touch(api, "c1", "changed")
    api.store.create(CM, cm("c9"))
    w2 = await InProcessWatcher(nats_server.url, api.url, "second").start()
    try:
        await converged(api, cache)
        assert cache.get("ConfigMap", "default", "c0") is None
        await until(lambda: cache.last_marker is not None and cache.last_marker.epoch == 2, what="epoch 2")
        # Exactly three object messages and one Synced marker: unchanged objects were not re-published.
        assert await last_seq(bus) - before == 4
        assert w2.metric("nodemesh_watcher_events_unchanged_total", {"kind": "ConfigMap"}) == 2  # c2, c3
    finally:
        await cache.stop()
        await w2.stop()


async def test_expired_watch_relists_and_deletes_vanished(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    for i in range(3):
        api.store.create(CM, cm(f"c{i}"))
    w = await InProcessWatcher(nats_server.url, api.url, "w").start()
    cache = K8sCache(bus)
    await cache.start()
    try:
        await cache.wait_synced(30)
        await converged(api, cache)
        # Cut every watch and refuse new ones (an API server going away), change things, compact
        # the history (etcd compaction), then let the watcher back in: its RV is now too old.
        api.server.frozen = True
        api.server.close_watches()
        api.store.delete(CM, "default", "c0")
        touch(api, "c1", "x")
        api.store.create(CM, cm("c7"))
        api.store.compact()
        await asyncio.sleep(0.5)
        api.server.frozen = False
        await converged(api, cache)
        assert cache.get("ConfigMap", "default", "c0") is None
        assert w.metric("nodemesh_watcher_relists_total", {"kind": "ConfigMap", "reason": "expired"}) >= 1
    finally:
        await cache.stop()
        await w.stop()


async def test_failover_after_kill_loses_no_event(
    nats_server: NatsServer, api: LocalApi, bus: Bus, tmp_path: Path
) -> None:
    for i in range(3):
        api.store.create(CM, cm(f"c{i}"))
    active = ProcessWatcher(nats_server.url, api.url, "proc-a", tmp_path / "a.log").start()
    standby: InProcessWatcher | None = None
    cache = K8sCache(bus)
    try:
        await until(lambda: _holder_is(bus, "proc-a"), 60, "process watcher active")
        await cache.start()
        await cache.wait_synced(60)
        await converged(api, cache)
        standby = await InProcessWatcher(nats_server.url, api.url, "standby").start()
        assert standby.metric("nodemesh_watcher_leader") == 0
        api.store.create(CM, cm("before-kill"))
        await converged(api, cache)
        active.kill()  # SIGKILL: no lease release; the standby must wait for the TTL
        # Changes while nobody is active.
        api.store.delete(CM, "default", "c0")
        touch(api, "c1", "during")
        api.store.create(CM, cm("during-failover"))
        await until(lambda: _holder_is(bus, "standby"), 30, "standby takes over")
        await converged(api, cache)
        assert standby.metric("nodemesh_watcher_leader") == 1
        api.store.create(CM, cm("after"))
        await converged(api, cache)
        assert cache.last_marker is not None and cache.last_marker.watcher == "standby"
    finally:
        active.close()
        await cache.stop()
        if standby is not None:
            await standby.stop()


async def _holder_is(bus: Bus, who: str) -> bool:
    return await lease_holder(bus) == who


async def test_status_patches_applied_by_the_active_watcher(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    pod = api.store.create(POD, {"metadata": {"name": "p", "namespace": "default"}, "spec": SPEC})
    uid = pod["metadata"]["uid"]
    w = await InProcessWatcher(nats_server.url, api.url, "w").start()
    try:

        def patch(status: dict[str, Any], uid: str = uid, name: str = "p", kind: str = "Pod") -> StatusPatch:
            return StatusPatch(
                kind=kind,
                api_version="v1",
                namespace="default",
                name=name,
                status=status,
                field_manager="test",
                uid=uid,
            )

        def pod_status() -> dict[str, Any]:
            return dict(api.store.get(POD, "default", "p").get("status") or {})

        await bus.publish(
            subjects.k8s_node_status("node-1", "Pod", "default", "p"), patch({"podIP": "10.244.1.7"})
        )
        await until(lambda: pod_status().get("podIP") == "10.244.1.7", what="status applied")
        spec_before = api.store.get(POD, "default", "p")["spec"]
        # Wrong uid (a recreated object), a vanished object, an unknown kind, garbage: all skipped.
        await bus.publish(
            subjects.k8s_node_status("node-1", "Pod", "default", "p"), patch({"phase": "Evil"}, uid="other")
        )
        await bus.publish(
            subjects.k8s_node_status("node-1", "Pod", "default", "gone"), patch({"x": 1}, name="gone", uid="")
        )
        await bus.publish(subjects.k8s_status("Widget", "default", "p"), patch({"x": 1}, kind="Widget"))
        await bus.nc.publish(subjects.k8s_node_status("node-1", "Pod", "default", "p"), b"\xff\x00garbage")
        await bus.publish(
            subjects.k8s_node_status("node-1", "Pod", "default", "p"), patch({"phase": "Running"})
        )
        await until(lambda: pod_status().get("phase") == "Running", what="later patch applied")
        assert pod_status()["podIP"] == "10.244.1.7"
        assert api.store.get(POD, "default", "p")["spec"] == spec_before
        assert w.metric("nodemesh_watcher_status_patches_total", {"result": "uid_mismatch"}) == 1
        assert w.metric("nodemesh_watcher_status_patches_total", {"result": "gone"}) == 1
        # A standby does not apply patches: only the active watcher writes to the API.
        standby = await InProcessWatcher(nats_server.url, api.url, "standby").start()
        try:
            await bus.publish(
                subjects.k8s_node_status("node-1", "Pod", "default", "p"), patch({"phase": "Succeeded"})
            )
            await until(lambda: pod_status().get("phase") == "Succeeded", what="applied by the active one")
            assert w.metric("nodemesh_watcher_status_patches_total", {"result": "applied"}) == 3
            assert standby.metric("nodemesh_watcher_status_patches_total", {"result": "applied"}) == 0
        finally:
            await standby.stop()
    finally:
        await w.stop()


async def test_watcher_rides_out_an_api_server_restart(
    nats_server: NatsServer, tmp_path: Path, bus: Bus
) -> None:
    api = LocalApi(tmp_path / "d", nodes=1, bookmark_interval=0.5)
    await api.start()
    port = api.port
    api.store.create(CM, cm("a"))
    w = await InProcessWatcher(nats_server.url, api.url, "w").start()
    cache = K8sCache(bus)
    await cache.start()
    try:
        await cache.wait_synced(30)
        await converged(api, cache)
        await api.stop()
        api = LocalApi(tmp_path / "d", nodes=1, port=port, bookmark_interval=0.5)
        await api.start()
        api.store.create(CM, cm("b"))
        api.store.delete(CM, "default", "a")
        await converged(api, cache)
    finally:
        await cache.stop()
        await w.stop()
        await api.stop()


async def test_kind_missing_from_the_api_is_skipped_then_picked_up(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    route = by_kind("TCPRoute")
    api.server.hidden.add("TCPRoute")  # a cluster without the TCPRoute CRD
    w = await InProcessWatcher(nats_server.url, api.url, "w", missing_kind_retry_s=0.3).start()
    cache = K8sCache(bus)
    await cache.start()
    try:
        await cache.wait_synced(30)
        assert cache.last_marker is not None and "TCPRoute" not in cache.last_marker.kinds
        assert "HTTPRoute" in cache.last_marker.kinds
        # The CRD gets installed: the watcher lists and watches it without a restart.
        api.server.hidden.clear()
        api.store.create(
            route,
            {
                "metadata": {"name": "t", "namespace": "default"},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 5432}]}],
                },
            },
        )
        await converged(api, cache)
        assert cache.get("TCPRoute", "default", "t") is not None
        assert w.metric("nodemesh_watcher_relists_total", {"kind": "TCPRoute", "reason": "missing"}) >= 1
    finally:
        await cache.stop()
        await w.stop()


async def test_watcher_recovers_after_nats_restart(nats_server: NatsServer, api: LocalApi) -> None:
    from nodemesh.bus import connect

    api.store.create(CM, cm("a"))
    w = await InProcessWatcher(nats_server.url, api.url, "w").start()
    try:
        await until(lambda: w.metric("nodemesh_watcher_leader") == 1, 30, "active")
        nats_server.stop()
        # Changes while the bus is down are published once it is back (relist after re-election).
        api.store.create(CM, cm("while-down"))
        api.store.delete(CM, "default", "a")
        # Down longer than the lease grace (2.5 s): the watcher must step down, then win again.
        await until(lambda: w.metric("nodemesh_watcher_leader") == 0, 30, "stepped down")
        nats_server.start()
        bus = await connect(nats_server.url, name="late", max_wait=20)
        cache = K8sCache(bus)
        await cache.start()
        try:
            await converged(api, cache, timeout=60)
            await until(lambda: w.metric("nodemesh_watcher_leader") == 1, 30, "active again")
            assert w.metric("nodemesh_watcher_lease_transitions_total", {"to": "active"}) == 2
        finally:
            await cache.stop()
            await bus.nc.close()
    finally:
        await w.stop()


async def test_object_over_nats_max_payload_is_skipped_not_blocking(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    api.store.create(CM, cm("small"))
    api.store.create(
        CM, {"metadata": {"name": "huge", "namespace": "default"}, "data": {"v": "x" * (2 << 20)}}
    )
    w = await InProcessWatcher(nats_server.url, api.url, "w").start()
    cache = K8sCache(bus)
    await cache.start()
    try:
        await cache.wait_synced(30)  # the initial sync completes despite the oversized object
        assert cache.get("ConfigMap", "default", "small") is not None
        assert cache.get("ConfigMap", "default", "huge") is None
        assert (
            w.metric("nodemesh_watcher_publish_errors_total", {"kind": "ConfigMap", "reason": "too_large"})
            == 1
        )
        # Shrunk below the limit, it is published like any change.
        touch(api, "huge", "small now")
        await converged(api, cache)
    finally:
        await cache.stop()
        await w.stop()


async def test_status_patch_published_while_no_watcher_is_active_is_applied_later(
    nats_server: NatsServer, api: LocalApi, bus: Bus
) -> None:
    # A failover leaves up to a lease TTL with no active watcher: patches must wait, not vanish.
    api.store.create(POD, {"metadata": {"name": "q", "namespace": "default"}, "spec": SPEC})
    patch = StatusPatch(
        kind="Pod", api_version="v1", namespace="default", name="q", status={"phase": "Running"}
    )
    await bus.publish(subjects.k8s_node_status("node-1", "Pod", "default", "q"), patch)
    await bus.nc.flush()
    assert (api.store.get(POD, "default", "q").get("status") or {}).get("phase") != "Running"
    w = await InProcessWatcher(nats_server.url, api.url, "late").start()
    try:
        await until(
            lambda: (api.store.get(POD, "default", "q").get("status") or {}).get("phase") == "Running",
            what="patch queued before any watcher was active is applied",
        )
        assert w.metric("nodemesh_watcher_status_patches_total", {"result": "applied"}) == 1
    finally:
        await w.stop()
