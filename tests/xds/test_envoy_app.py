"""The whole xds service (``services.xds.app``) in-process: K8S stream in, real Envoy and status out.

Objects go into the K8S stream as the watcher would publish them; the service translates them, serves
a node's real Envoy, and reports Gateway ``Programmed`` only after that Envoy ACKed the listener —
with the NACK reason when Envoy refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from conformance.envoy import Envoy
from meshctl.main import main as cli_main
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import ObjectEvent, StatusPatch, Synced
from nodemesh.messages.xds import XdsStatusReply, XdsStatusRequest
from nodemesh.runtime import Service, run_service
from services.xds.app import XdsApp
from services.xds.app import start as xds_start
from services.xds.bootstrap import render_bootstrap
from services.xds.config import XdsConfig
from services.xds.snapshot import LISTENER
from testkit.natsserver import NatsServer, free_port
from testkit.xdspki import TestPki
from tests.xds.envoy_fixtures import Backends, eventually, serves

pytestmark = pytest.mark.envoy
NS = "default"


def gateway_objects(gw_ip: str, lport: int, backend_port: int) -> list[dict[str, Any]]:
    gw_api = "gateway.networking.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": gw_api,
            "kind": "GatewayClass",
            "metadata": {"name": "nodemesh", "generation": 1},
            "spec": {"controllerName": "nodemesh.io/gateway-controller"},
        },
        {
            "apiVersion": gw_api,
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": NS, "generation": 1},
            "spec": {
                "gatewayClassName": "nodemesh",
                "listeners": [{"name": "http", "protocol": "HTTP", "port": lport}],
            },
        },
        # What the local API server's LB-IPAM gives the Gateway's Service.
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "cilium-gateway-gw", "namespace": NS},
            "spec": {"type": "LoadBalancer", "ports": [{"port": lport, "name": f"port-{lport}"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": gw_ip}]}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"ports": [{"port": 80, "targetPort": backend_port, "name": "http"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": backend_port, "protocol": "TCP"}],
        },
        {
            "apiVersion": gw_api,
            "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": NS, "generation": 1},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}],
            },
        },
    ]


# Malformed objects next to the good ones: they must neither crash xds nor stop it serving the rest.
GW_API = "gateway.networking.k8s.io/v1"
GARBAGE: list[dict[str, Any]] = [
    {"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "bad", "namespace": NS},
     "spec": "garbage"},
    {"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": "bad", "namespace": NS},
     "spec": {"gatewayClassName": "nodemesh", "listeners": 5}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "echo-bad", "namespace": NS, "labels": {"kubernetes.io/service-name": "echo"}},
     "endpoints": "x", "ports": [{"port": "not-a-port"}]},
]  # fmt: skip


async def put(bus: Bus, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    kind = obj["kind"]
    ns = meta.get("namespace", "") if by_kind(kind).namespaced else ""
    ev = ObjectEvent(
        type="upsert", kind=kind, api_version=obj["apiVersion"], namespace=ns, name=meta["name"], obj=obj
    )
    await bus.js_publish(subjects.k8s_object(kind, ns, meta["name"]), ev)


async def mark_synced(bus: Bus) -> None:
    seq = (await bus.js.stream_info("K8S")).state.last_seq
    await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="test", epoch=1, stream_seq=int(seq)))


class Running:
    def __init__(self) -> None:
        self.svc: Service | None = None
        self.app: XdsApp | None = None
        self.patches: list[StatusPatch] = []
        self.grpc_port = free_port()
        self.pki = TestPki()

    def bootstrap(self, node: str = "node-1", **kw: Any) -> dict[str, Any]:
        """A bootstrap for ``node``'s Envoy, with that node's client certificate (ADS is mTLS)."""
        return render_bootstrap(node, "127.0.0.1", self.grpc_port, 0, tls_dir=self.pki.node_dir(node), **kw)

    def programmed(self) -> dict[str, Any] | None:
        for p in reversed(self.patches):
            if p.kind == "Gateway":
                for c in p.status.get("conditions", []):
                    if c["type"] == "Programmed":
                        return dict(c)
        return None


@contextlib.asynccontextmanager
async def replica(nats_url: str, bus: Bus, nodes: str = "node-1") -> AsyncIterator[Running]:
    """One xds replica in-process (the real service runtime), collecting the status patches it sees."""
    run = Running()
    cfg = XdsConfig(
        nats_url=nats_url,
        grpc_addr=f"127.0.0.1:{run.grpc_port}",
        nodes=nodes,
        debounce_ms=20,
        tls_dir=run.pki.server_dir,
    )

    async def on_patch(p: StatusPatch, _: object) -> None:
        run.patches.append(p)

    sub = await bus.subscribe(subjects.K8S_STATUS_ALL, StatusPatch, on_patch)

    async def main(svc: Service) -> None:
        run.svc = svc
        run.app = await xds_start(svc)

    stop = asyncio.Event()
    task = asyncio.create_task(run_service("xds", cfg, main, install_signals=False, stop=stop))
    try:
        await eventually(lambda: _true(run.app is not None and run.svc.health_port > 0), 30, "xds started")  # type: ignore[union-attr]
        yield run
    finally:
        await sub.unsubscribe()
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        run.pki.close()


@pytest.fixture
async def xds_service(nats_server: NatsServer, bus: Bus) -> AsyncIterator[Running]:
    async with replica(nats_server.url, bus) as run:
        yield run


async def _true(v: bool) -> bool:
    return v


async def readyz(svc: Service) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{svc.health_port}/readyz") as r:
        return r.status


async def test_gateway_served_by_node_envoy_and_programmed_after_ack(xds_service: Running, bus: Bus) -> None:
    backends = Backends()
    backend_port = await backends.add("echo")
    gw_ip, lport = f"127.0.100.{10 + free_port() % 80}", free_port()
    envoy = Envoy(xds_service.bootstrap("node-1"), name="envoy@node-1").start()
    try:
        for obj in gateway_objects(gw_ip, lport, backend_port) + GARBAGE:
            await put(bus, obj)
        await envoy.wait_admin(60)
        # Before the watcher's initial list completes, nothing is ready and nothing is served.
        assert xds_service.svc is not None
        assert await readyz(xds_service.svc) == 503
        assert "LIVE" not in (await envoy.admin_get("/ready"))[1]
        await mark_synced(bus)
        await eventually(lambda: _is(readyz(xds_service.svc), 200), 30, "xds ready")  # type: ignore[arg-type]
        await serves(f"http://{gw_ip}:{lport}/", "echo", 60)
        assert xds_service.app is not None  # only malformed objects may ever be left out
        assert {name for _, _, name in xds_service.app._quarantine} <= {"bad", "echo-bad"}

        async def programmed_true() -> bool:
            c = xds_service.programmed()
            return c is not None and c["status"] == "True"

        await eventually(programmed_true, 30, "Gateway Programmed=True")
        gw_patch = [p for p in xds_service.patches if p.kind == "Gateway"][-1]
        assert gw_patch.status["addresses"] == [{"type": "IPAddress", "value": gw_ip}]
        first = [p for p in xds_service.patches if p.kind == "Gateway" and _prog(p) == "False"]
        assert first and first[0].status is not gw_patch.status  # it was Pending before the ACK
    finally:
        envoy.stop()
        await backends.close()


async def test_nacked_gateway_listener_reports_the_reason(
    xds_service: Running, bus: Bus, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Gateway whose address:port Envoy cannot bind: Programmed=False with Envoy's error."""
    backends = Backends()
    backend_port = await backends.add("echo")
    gw_ip, lport = f"127.0.100.{100 + free_port() % 80}", free_port()
    blocker = socket.socket()  # no SO_REUSEPORT: Envoy's bind of the same address:port fails
    blocker.bind((gw_ip, lport))
    blocker.listen()
    envoy = Envoy(xds_service.bootstrap("node-1"), name="envoy@node-1").start()
    try:
        for obj in gateway_objects(gw_ip, lport, backend_port):
            await put(bus, obj)
        await mark_synced(bus)

        async def nacked() -> bool:
            c = xds_service.programmed()
            return c is not None and c["status"] == "False" and "rejected" in c["message"]

        await eventually(nacked, 60, "Programmed=False with the NACK reason")
        c = xds_service.programmed()
        assert c is not None and c["reason"] == "Invalid" and "node-1" in c["message"]
        assert "address already in use" in c["message"].lower() or "cannot bind" in c["message"].lower()
        # The same reason, per resource, from `xds.status` and `nodemesh xds status`.
        reply = await bus.request(subjects.XDS_STATUS, XdsStatusRequest(node="node-1"), XdsStatusReply)
        [node] = reply.nodes
        rejected = [r for r in node.resources if r.state == "rejected"]
        assert [r.type_url for r in rejected] == [LISTENER] and "already in use" in rejected[0].error.lower()
        # cluster and endpoints are applied; the route stays pending: only the refused listener asks for it
        assert node.streams == 1 and node.counts == {"applied": 2, "rejected": 1, "pending": 1}
        capsys.readouterr()
        code = await asyncio.to_thread(cli_main, ["xds", "status", "--nats-url", nats_server.url])
        out = capsys.readouterr().out
        assert code == 1 and "rejected" in out and rejected[0].name in out
    finally:
        blocker.close()
        envoy.stop()
        await backends.close()


def _prog(p: StatusPatch) -> str:
    for c in p.status.get("conditions", []):
        if c["type"] == "Programmed":
            return str(c["status"])
    return ""


async def _is(coro: Any, value: int) -> bool:
    return bool(await coro == value)


async def test_every_replica_reports_programmed_from_acks_it_did_not_serve(
    nats_server: NatsServer, bus: Bus
) -> None:
    """Envoy talks to replica A only; replica B learns the listener ACK over NATS and agrees."""
    backends = Backends()
    backend_port = await backends.add("echo")
    gw_ip, lport = f"127.0.100.{180 + free_port() % 60}", free_port()
    async with replica(nats_server.url, bus) as a, replica(nats_server.url, bus) as b:
        envoy = Envoy(a.bootstrap("node-1"), name="envoy@node-1").start()
        try:
            for obj in gateway_objects(gw_ip, lport, backend_port):
                await put(bus, obj)
            await mark_synced(bus)
            await serves(f"http://{gw_ip}:{lport}/", "echo", 60)

            def programmed_by(r: Running) -> str:
                assert r.app is not None
                st = r.app.published("Gateway", NS, "gw") or {}
                return next((c["status"] for c in st.get("conditions", []) if c["type"] == "Programmed"), "")

            await eventually(lambda: _true(programmed_by(a) == "True"), 30, "replica A: Programmed")
            await eventually(lambda: _true(programmed_by(b) == "True"), 30, "replica B: Programmed")
            assert b.app is not None and b.app.relay.streams._value.get() == 0  # type: ignore[attr-defined]
        finally:
            envoy.stop()
            await backends.close()
