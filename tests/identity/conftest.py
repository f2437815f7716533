"""Helpers for identity tests: feed the K8S stream like the watcher does, run replicas in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from nats.js.errors import NotFoundError

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.identity import Identity, IPCacheEntry
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.runtime import Service, run_service
from nodemesh.streams import ipcache_key
from services.identity.app import main as identity_main
from services.identity.config import IdentityConfig
from testkit.natsserver import NatsServer

T = TypeVar("T")


async def eventually(fn: Callable[[], Awaitable[T]], *, timeout: float = 20.0, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy (no timing assumptions beyond a generous cap)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await fn()
        except Exception as e:  # not there yet
            last = e
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or fn}: last={last!r}")
        await asyncio.sleep(0.05)


class Cluster:
    """Plays the watcher: upserts/deletes objects on the K8S stream."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.epoch = 0

    async def put(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        await self.bus.js_publish(
            subjects.k8s_object(kind, ns, meta["name"]),
            ObjectEvent(type="upsert", kind=kind, api_version="v1", namespace=ns, name=meta["name"], obj=obj),
        )

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        await self.bus.js_publish(
            subjects.k8s_object(kind, namespace, name),
            ObjectEvent(type="delete", kind=kind, api_version="v1", namespace=namespace, name=name),
        )

    async def synced(self) -> None:
        self.epoch += 1
        info = await self.bus.js.stream_info("K8S")
        await self.bus.js_publish(
            subjects.K8S_SYNCED, Synced(watcher="test", epoch=self.epoch, stream_seq=int(info.state.last_seq))
        )

    async def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        await self.put(
            "Namespace",
            {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}},
        )

    async def node(self, name: str, ip: str, cidr: str) -> None:
        await self.put(
            "Node",
            {
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": ip},
                        {"type": "Hostname", "address": name},
                    ]
                },
            },
        )

    async def pod(
        self, ns: str, name: str, labels: dict[str, str], node: str, ip: str | None, sa: str = "default"
    ) -> None:
        status: dict[str, Any] = {"phase": "Running"}
        if ip:
            status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        await self.put(
            "Pod",
            {
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "serviceAccountName": sa},
                "status": status,
            },
        )


@pytest.fixture
async def cluster(bus: Bus) -> Cluster:
    return Cluster(bus)


class Replica:
    def __init__(self, task: asyncio.Task[int], stop: asyncio.Event, svc: Service) -> None:
        self.task = task
        self.stop_event = stop
        self.svc = svc

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 20)


RunReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def run_replica(nats_server: NatsServer, bus: Bus, tmp_path: Path) -> AsyncIterator[RunReplica]:
    replicas: list[Replica] = []

    async def start(**overrides: Any) -> Replica:
        try:
            await bus.js.get_last_msg("K8S", subjects.K8S_SYNCED)
        except NotFoundError:  # no watcher in this test: the (empty) cluster state is complete
            await Cluster(bus).synced()
        cfg = IdentityConfig(
            nats_url=overrides.pop("nats_url", nats_server.url),
            data_dir=str(overrides.pop("data_dir", tmp_path / "identity")),
            **{"gc_interval": 0.2, "ca_check_interval": 0.2, "lease_renew": 0.2, **overrides},
        )
        holder: dict[str, Service] = {}
        stop = asyncio.Event()

        async def main(svc: Service) -> None:
            holder["svc"] = svc
            await identity_main(svc)

        task = asyncio.create_task(run_service("identity", cfg, main, install_signals=False, stop=stop))
        await eventually(lambda: _true("svc" in holder or task.done()), what="service start")
        if task.done():
            raise AssertionError(f"identity replica exited with {task.result()}")
        replica = Replica(task, stop, holder["svc"])
        replicas.append(replica)
        # Ready = endpoints registered, replay done, and a leader exists (this one converged, or another).
        await eventually(lambda: _true(replica.svc.ready or task.done()), what="replica ready", timeout=60)
        if task.done():
            raise AssertionError(f"identity replica exited with {task.result()}")
        return replica

    yield start
    for r in replicas:
        if not r.task.done():
            with contextlib.suppress(Exception):
                await r.stop()


async def _true(value: bool) -> bool:
    return value


async def kv_value(bus: Bus, bucket: str, key: str, tp: type[T]) -> T | None:
    kv = await bus.kv(bucket)
    try:
        entry = await kv.get(key)
    except Exception:
        return None
    return msgspec.msgpack.decode(entry.value or b"", type=tp)


async def ipcache_entry(bus: Bus, ip: str) -> IPCacheEntry | None:
    return await kv_value(bus, "ipcache", ipcache_key(ip), IPCacheEntry)


async def identity(bus: Bus, n: int) -> Identity | None:
    return await kv_value(bus, "identities", f"id.{n}", Identity)
