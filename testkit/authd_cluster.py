"""Two (or more) simulated nodes' authd in-process against a real nats-server, plus a test CA,
the KV state the identity service would write, and the K8S stream the watcher would fill."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from nats.aio.msg import Msg

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode, encode
from nodemesh.messages.auth import AuthEvent, AuthKey, AuthVerdict
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.runtime import Service, run_service
from nodemesh.streams import ipcache_key
from services.authd.app import main as authd_main
from services.authd.config import AuthdConfig
from services.authd.manager import AuthManager
from testkit.natsserver import free_port
from testkit.spiffe_ca import SpiffeCA

NS = "default"


async def poll(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def key(local: int, remote: int, node: str, auth_type: int = 1) -> AuthKey:
    return AuthKey(local_identity=local, remote_identity=remote, remote_node=node, auth_type=auth_type)


class Seen:
    """Every verdict and event authd publishes, with the time it arrived."""

    def __init__(self) -> None:
        self.granted: list[tuple[float, str, AuthVerdict]] = []
        self.revoked: list[tuple[float, str, AuthVerdict]] = []
        self.events: list[tuple[float, AuthEvent]] = []
        self.required: list[Msg] = []

    async def start(self, bus: Bus) -> None:
        async def on(msg: Msg) -> None:
            now = time.time()
            parts = msg.subject.split(".")
            if parts[1] == "granted":
                self.granted.append((now, parts[2], decode(msg.data, AuthVerdict)))
            elif parts[1] == "revoked":
                self.revoked.append((now, parts[2], decode(msg.data, AuthVerdict)))
            elif parts[1] == "events":
                self.events.append((now, decode(msg.data, AuthEvent)))
            elif parts[1] == "required":
                self.required.append(msg)

        await bus.nc.subscribe("auth.>", cb=on)

    def grants(self, node: str, k: AuthKey) -> list[tuple[float, AuthVerdict]]:
        return [(t, v) for t, n, v in self.granted if n == node and v.key == k]

    def revokes(self, node: str, k: AuthKey) -> list[tuple[float, AuthVerdict]]:
        return [(t, v) for t, n, v in self.revoked if n == node and v.key == k]

    def failures(self, node: str, reason: str, role: str = "") -> list[AuthEvent]:
        return [
            e
            for _, e in self.events
            if e.node == node and e.type == "failed" and e.reason == reason and (not role or e.role == role)
        ]

    def of_type(self, node: str, type_: str) -> list[AuthEvent]:
        return [e for _, e in self.events if e.node == node and e.type == type_]


class Cluster:
    def __init__(self, bus: Bus, nats_url: str, ca: SpiffeCA, tmp: str) -> None:
        self.bus = bus
        self.nats_url = nats_url
        self.ca = ca
        self.tmp = tmp
        self.seen = Seen()
        self.services: dict[str, Service] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[int]] = {}
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        await self.ca.serve(self.bus)
        await self.seen.start(self.bus)
        await self.mark_synced()

    # --- state the identity service and the watcher would write ---------------------------------
    async def add_node(self, name: str, address: str, port: int | None = None) -> int:
        port = port or free_port(address)
        self.ports[name] = port
        kv = await self.bus.kv("nodes")
        info = NodeInfo(name=name, address=address, pod_cidr="10.244.0.0/24", auth_port=port)
        await kv.put(name, encode(info))
        return port

    async def remove_node(self, name: str) -> None:
        await (await self.bus.kv("nodes")).delete(name)

    async def add_identity(self, ident: int, app: str, ns: str = NS, extra: tuple[str, ...] = ()) -> None:
        labels = sorted([f"k8s:app={app}", f"k8s:{'io.kubernetes.pod.namespace'}={ns}", *extra])
        await (await self.bus.kv("identities")).put(f"id.{ident}", encode(Identity(id=ident, labels=labels)))

    async def add_pod(self, ip: str, ident: int, node: str, pod: str = "", ns: str = NS) -> None:
        entry = IPCacheEntry(ip=ip, identity=ident, node=node, namespace=ns, pod=pod or f"pod-{ip}")
        await (await self.bus.kv("ipcache")).put(ipcache_key(ip), encode(entry))

    async def remove_pod(self, ip: str) -> None:
        await (await self.bus.kv("ipcache")).delete(ipcache_key(ip))

    async def put_policy(self, name: str, spec: dict[str, Any], ns: str = NS) -> None:
        obj = {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
        ev = ObjectEvent(
            type="upsert",
            kind="CiliumNetworkPolicy",
            api_version="cilium.io/v2",
            namespace=ns,
            name=name,
            obj=obj,
        )
        await self.bus.js_publish(subjects.k8s_object("CiliumNetworkPolicy", ns, name), ev)

    async def delete_policy(self, name: str, ns: str = NS) -> None:
        ev = ObjectEvent(
            type="delete", kind="CiliumNetworkPolicy", api_version="cilium.io/v2", namespace=ns, name=name
        )
        await self.bus.js_publish(subjects.k8s_object("CiliumNetworkPolicy", ns, name), ev)

    async def mark_synced(self) -> None:
        info = await self.bus.js.stream_info("K8S")
        await self.bus.js_publish(
            subjects.K8S_SYNCED, Synced(watcher="test", epoch=1, stream_seq=int(info.state.last_seq))
        )

    # --- authd instances ---------------------------------------------------------------------------
    async def start_authd(self, node: str, **kw: Any) -> Service:
        kw.setdefault("workload_api", False)
        cfg = AuthdConfig(
            nats_url=self.nats_url,
            node=node,
            auth_port=self.ports[node],
            data_dir=self.tmp,
            log_level="warning",
            **kw,
        )
        holder: dict[str, Service] = {}

        async def main(svc: Service) -> None:
            holder["svc"] = svc
            await authd_main(svc)

        stop = asyncio.Event()
        self._stops[node] = stop
        self._tasks[node] = asyncio.create_task(
            run_service("authd", cfg, main, install_signals=False, stop=stop)
        )
        svc: Service = await poll(lambda: holder.get("svc"), 30, f"authd {node} to start")
        await poll(lambda: svc.ready, 60, f"authd {node} to be ready")
        self.services[node] = svc
        return svc

    def manager(self, node: str) -> AuthManager:
        m: AuthManager = self.services[node].authd  # type: ignore[attr-defined]
        return m

    async def stop_authd(self, node: str) -> None:
        self._stops.pop(node).set()
        await asyncio.wait_for(self._tasks.pop(node), 15)
        del self.services[node]

    async def stop_all(self) -> None:
        for stop in self._stops.values():
            stop.set()
        for t in self._tasks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 15)

    async def metric(self, node: str, name: str, **labels: str) -> float:
        """A sample from the node's /metrics, as Prometheus would scrape it (0 when absent)."""
        port = self.services[node].health_port
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            head, value = line.rsplit(" ", 1)
            mname, _, lab = head.partition("{")
            got = ",".join(sorted(lab.rstrip("}").split(","))) if lab else ""
            if mname == name and got == want:
                return float(value)
        return 0.0


Step = Callable[[], Awaitable[None]]


def dump(c: Cluster) -> str:
    out = []
    for _, e in c.seen.events:
        out.append(f"{e.node} {e.type} {e.key} {e.reason} {e.detail} {e.role}")
    for node in c.services:
        m = c.manager(node)
        out.append(f"{node}: hosted={sorted(m.topo.hosted)} desired={m.desired} errs={m.policy_errors}")
        entries = [(k, e.state, e.last_error) for k, e in m.entries.items()]
        out.append(f"{node}: svids={list(m.store.svids)} entries={entries}")
    return "\n".join(out)
