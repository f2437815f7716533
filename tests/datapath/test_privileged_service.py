"""The datapath service end to end on a real nats-server: pods from the K8S stream become netns with
running workloads and status, CiliumNetworkPolicy is enforced on real traffic, drops arrive as flows
on NATS, auth verdicts open auth-required traffic, invalid policies get status, pods go cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.auth import AuthKey, AuthRequired, AuthVerdict
from nodemesh.messages.flow import Flow
from nodemesh.messages.k8s import StatusPatch
from nodemesh.netns import netns_exists, netns_name, scope_for
from nodemesh.runtime import run_service
from services.datapath.app import main as datapath_main
from services.datapath.cleanup import cleanup_all
from services.datapath.config import DatapathConfig
from services.datapath.maps import NodeMaps, PolicyKeyC, ip_to_be32
from testkit.natsserver import NatsServer, free_port
from testkit.podnet import echo, tcp_ok, tcp_open
from testkit.promscrape import total
from tests.datapath import k8s

pytestmark = pytest.mark.privileged

CNP_ALLOW = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "allow-client", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
            },
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "7070", "protocol": "TCP"}]}],
                "authentication": {"mode": "required"},
            },
        ],
    },
}
CNP_BAD = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "bad", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"toPorts": [{"ports": [{"port": "http-ish!"}]}]}],
    },
}


class Harness:
    def __init__(self, bus: Bus, cfg: DatapathConfig) -> None:
        self.bus = bus
        self.cfg = cfg
        self.status: dict[str, list[dict[str, Any]]] = {}
        self.flows: list[Flow] = []
        self.auth: list[AuthRequired] = []
        self.task: asyncio.Task[int] | None = None
        self.stop: asyncio.Event | None = None

    async def subscribe(self) -> None:
        async def on_status(p: StatusPatch, _m: Any) -> None:
            self.status.setdefault(f"{p.kind}/{p.namespace}/{p.name}", []).append(p.status)

        async def on_flow(f: Flow, _m: Any) -> None:
            self.flows.append(f)

        async def on_auth(a: AuthRequired, _m: Any) -> None:
            self.auth.append(a)

        await self.bus.subscribe(subjects.K8S_STATUS_ALL, StatusPatch, on_status)
        await self.bus.subscribe(subjects.flows(self.cfg.node), Flow, on_flow)
        await self.bus.subscribe(subjects.auth_required(self.cfg.node), AuthRequired, on_auth)

    def start(self) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            run_service("datapath", self.cfg, datapath_main, install_signals=False, stop=self.stop)
        )

    async def shutdown(self) -> None:
        if self.task is not None and self.stop is not None:
            self.stop.set()
            assert await asyncio.wait_for(self.task, 30) == 0
            self.task = None

    async def metrics(self) -> str:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(f"http://{self.cfg.health_addr}/metrics") as r:
            return await r.text()

    def netns(self, pod: str) -> str:
        return netns_name(self.cfg.node, "default", pod, self.cfg.scope or scope_for(self.cfg.data_dir))

    def pod_status(self, name: str) -> dict[str, Any] | None:
        hist = self.status.get(f"Pod/default/{name}")
        return hist[-1] if hist else None

    def ready_ip(self, name: str) -> str:
        st = self.pod_status(name)
        if (
            st
            and st.get("phase") == "Running"
            and any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])
        ):
            return str(st["podIP"])
        return ""


@pytest.fixture
async def harness(nats_server: NatsServer, bus: Bus, pin_root: str, tmp_path: Path) -> AsyncIterator[Harness]:
    token = secrets.token_hex(3)
    node = f"n{token}"
    cidr = f"10.{200 + int(token[:2], 16) % 50}.{int(token[2:4], 16)}.0/24"
    cfg = DatapathConfig(
        nats_url=nats_server.url, node=node, data_dir=str(tmp_path / "nodes" / node), pin_root=pin_root,
        pod_cidr="", node_ip="127.0.50.250", log_format="text", health_addr=f"127.0.0.1:{free_port()}",
        auth_gate_timeout=0.0,  # the test plays the identity service once pods run: no start gate
    )  # fmt: skip
    h = Harness(bus, cfg)
    await h.subscribe()
    await k8s.put_obj(bus, {"kind": "Namespace", "metadata": {"name": "default", "labels": {"team": "a"}}})
    await k8s.put_obj(bus, {"kind": "Node", "metadata": {"name": node}, "spec": {"podCIDR": cidr}})
    await k8s.put_node(bus, node, "127.0.50.250", cidr)
    try:
        yield h
    finally:
        with contextlib.suppress(Exception):
            await h.shutdown()
        cleanup_all(str(tmp_path))


async def test_privileged_service_pods_policy_flows_auth(harness: Harness, bus: Bus) -> None:
    h, node = harness, harness.cfg.node
    await k8s.put_obj(
        bus, k8s.pod("server", node, {"app": "server"}, ports=(8080, 9090, 7070), probe_port=8080)
    )
    await k8s.put_obj(bus, k8s.pod("client", node, {"app": "client"}))
    await k8s.put_obj(bus, CNP_ALLOW)
    # bad input: a pod whose container is garbage, and one whose spec is not even an object
    bad = k8s.pod("bad", node, {"app": "bad"})
    bad["spec"]["containers"] = "garbage"
    await k8s.put_obj(bus, bad)
    worse = {"kind": "Pod", "metadata": {"name": "worse", "namespace": "default"}, "spec": "x"}
    await k8s.put_obj(bus, worse)
    await k8s.synced(bus)
    h.start()
    server_ip = await k8s.until(lambda: h.ready_ip("server"), 60)
    client_ip = await k8s.until(lambda: h.ready_ip("client"), 60)
    bad_status = await k8s.until(lambda: h.pod_status("bad"))
    assert bad_status["phase"] == "Failed"
    # downward API env reached the workload
    log = Path(h.cfg.data_dir) / "pods" / "default_server.log"
    await k8s.until(lambda: log.exists() and f"ip {server_ip}" in log.read_text(), 30)
    assert f"node {node}" in log.read_text()
    # the identity service's part: identities and ipcache for both pods
    await k8s.put_identity(bus, 70001, ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_identity(bus, 70002, ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_ipcache(bus, server_ip, 70001, node, "default", "server")
    await k8s.put_ipcache(bus, client_ip, 70002, node, "default", "client")
    client_ns = h.netns("client")
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 9090)
    drop = await k8s.until(
        lambda: next(
            (
                f
                for f in h.flows
                if f.verdict == "DROPPED" and f.l4 and f.l4.tcp and f.l4.tcp.destination_port == 9090
            ),
            None,
        )
    )
    assert drop.drop_reason_desc == "POLICY_DENIED" and drop.traffic_direction == "INGRESS"
    assert (
        drop.destination is not None
        and drop.destination.pod_name == "server"
        and drop.destination.identity == 70001
    )
    assert (
        drop.source is not None
        and drop.source.pod_name == "client"
        and "k8s:app=client" in drop.source.labels
    )
    assert any(
        f.verdict == "FORWARDED" and f.l4 and f.l4.tcp and f.l4.tcp.destination_port == 8080 for f in h.flows
    )
    # Hubble's metric names, and the kernel counters, on /metrics
    metrics = await h.metrics()
    assert total(metrics, "hubble_drop_total", protocol="TCP", reason="POLICY_DENIED") >= 1
    processed = "hubble_flows_processed_total"
    assert total(metrics, processed, protocol="TCP", type="Trace", verdict="FORWARDED") >= 1
    assert total(metrics, processed, type="Drop", verdict="DROPPED", source_app="client") >= 1
    assert 'hubble_lost_events_total{source="perf_event_ring_buffer"} 0.0' in metrics
    assert 'nodemesh_datapath_drops_total{reason="POLICY_DENIED"}' in metrics

    # authentication required on 7070: dropped with AUTH_REQUIRED and signalled, until authd grants
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 7070)
    sig = await k8s.until(lambda: next(iter(h.auth), None))
    assert (
        sig.key.local_identity == 70001 and sig.key.remote_identity == 70002 and sig.key.remote_node == node
    )
    assert any(f.drop_reason_desc == "AUTH_REQUIRED" and f.auth_type == "SPIRE" for f in h.flows)
    verdict = AuthVerdict(
        key=AuthKey(local_identity=70001, remote_identity=70002, remote_node=node), expires=time.time() + 600
    )
    await bus.publish(subjects.auth_granted(node), verdict)
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 7070), 30)

    # an invalid policy gets an error condition; the valid one stays enforced
    await k8s.put_obj(bus, CNP_BAD)
    st = await k8s.until(lambda: h.status.get("CiliumNetworkPolicy/default/bad"))
    assert st[-1]["conditions"][0]["status"] == "False" and "port" in st[-1]["conditions"][0]["message"]
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 9090)

    # the pod goes: netns, veth, endpoint and policy entries go with it
    maps = NodeMaps(os.path.join(h.cfg.pin_root, scope_for(h.cfg.data_dir), node))
    try:
        before_eps = len(list(maps.endpoint_items()))
        server_ns = h.netns("server")
        await k8s.del_obj(bus, "Pod", "default", "server")
        await k8s.until(lambda: not netns_exists(server_ns), 30)
        await k8s.until(lambda: len(list(maps.endpoint_items())) == before_eps - 1, 30)
        ep_ids = {info.ep_id for _, info in maps.endpoint_items()}
        assert {int(PolicyKeyC.from_buffer_copy(k).ep_id) for k in maps.policy_items()} <= ep_ids
        # and its connections: no conntrack entry names its address any more
        gone = ip_to_be32(server_ip)
        assert not [k for k, _ in maps.ct_items() if gone in (k.saddr, k.daddr)]
    finally:
        maps.close()


async def test_privileged_service_restart_keeps_addresses_and_enforcement(harness: Harness, bus: Bus) -> None:
    h, node = harness, harness.cfg.node
    await k8s.put_obj(bus, k8s.pod("server", node, {"app": "server"}, ports=(8080, 9090), probe_port=8080))
    await k8s.put_obj(bus, k8s.pod("client", node, {"app": "client"}))
    await k8s.put_obj(bus, k8s.pod("gone", node, {"app": "server"}))  # deleted while the agent is down
    await k8s.put_obj(bus, CNP_ALLOW)
    await k8s.put_identity(bus, 70001, ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_identity(bus, 70002, ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.synced(bus)
    h.start()
    server_ip = await k8s.until(lambda: h.ready_ip("server"), 60)
    client_ip = await k8s.until(lambda: h.ready_ip("client"), 60)
    await k8s.until(lambda: h.ready_ip("gone"), 60)
    await k8s.put_ipcache(bus, server_ip, 70001, node, "default", "server")
    await k8s.put_ipcache(bus, client_ip, 70002, node, "default", "client")
    client_ns = h.netns("client")
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    conn = await asyncio.to_thread(tcp_open, client_ns, server_ip, 8080)
    assert await asyncio.to_thread(echo, conn)
    workload_pid = int((Path(h.cfg.data_dir) / "pods" / "default_server.pid").read_text().split()[0])
    await h.shutdown()
    # agent down: workloads keep running (as containers outlive a kubelet), programs keep enforcing
    assert await asyncio.to_thread(echo, conn, b"while-down")
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 9090)
    await k8s.del_obj(bus, "Pod", "default", "gone")
    h.status.clear()
    h.start()
    assert await k8s.until(lambda: h.ready_ip("server"), 60) == server_ip
    assert await k8s.until(lambda: h.ready_ip("client"), 60) == client_ip
    # the same workload process was adopted, and the connection opened before the restart still flows
    assert int((Path(h.cfg.data_dir) / "pods" / "default_server.pid").read_text().split()[0]) == workload_pid
    assert await asyncio.to_thread(echo, conn, b"after-restart")
    conn.close()
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 9090)
    # the pod deleted meanwhile is collected: netns, endpoint entry and policy entries
    await k8s.until(lambda: not netns_exists(h.netns("gone")), 30)
    maps = NodeMaps(os.path.join(h.cfg.pin_root, scope_for(h.cfg.data_dir), node))
    try:
        await k8s.until(lambda: len(list(maps.endpoint_items())) == 2, 30)
        ep_ids = {info.ep_id for _, info in maps.endpoint_items()}
        assert {int(PolicyKeyC.from_buffer_copy(k).ep_id) for k in maps.policy_items()} == ep_ids
    finally:
        maps.close()


@pytest.fixture
async def two_nodes(
    nats_server: NatsServer, bus: Bus, pin_root: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, Harness]]:
    token = secrets.token_hex(3)
    base = f"10.{200 + int(token[:2], 16) % 50}"
    hs = []
    for i, suffix in enumerate(("x", "y")):
        node, cidr = f"n{token}{suffix}", f"{base}.{(int(token[2:4], 16) + i) % 256}.0/24"
        cfg = DatapathConfig(
            nats_url=nats_server.url, node=node, data_dir=str(tmp_path / "nodes" / node), pin_root=pin_root,
            pod_cidr=cidr, node_ip=f"127.0.50.{251 + i}", log_format="text",
            auth_gate_timeout=0.0,  # the test plays the identity service once pods run: no start gate
        )  # fmt: skip
        await k8s.put_node(bus, node, cfg.node_ip, cidr)
        hs.append(Harness(bus, cfg))
    for h in hs:
        await h.subscribe()
    await k8s.put_obj(bus, {"kind": "Namespace", "metadata": {"name": "default"}})
    try:
        yield hs[0], hs[1]
    finally:
        for h in hs:
            with contextlib.suppress(Exception):
                await h.shutdown()
        cleanup_all(str(tmp_path))


async def test_privileged_two_nodes_cross_node_auth(two_nodes: tuple[Harness, Harness], bus: Bus) -> None:
    x, y = two_nodes
    await k8s.put_obj(bus, k8s.pod("client", x.cfg.node, {"app": "client"}))
    await k8s.put_obj(
        bus, k8s.pod("server", y.cfg.node, {"app": "server"}, ports=(8080, 9090, 7070), probe_port=8080)
    )
    await k8s.put_obj(bus, CNP_ALLOW)
    await k8s.put_identity(bus, 70001, ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_identity(bus, 70002, ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.synced(bus)
    x.start()
    y.start()
    client_ip = await k8s.until(lambda: x.ready_ip("client"), 60)
    server_ip = await k8s.until(lambda: y.ready_ip("server"), 60)
    await k8s.put_ipcache(bus, server_ip, 70001, y.cfg.node, "default", "server")
    await k8s.put_ipcache(bus, client_ip, 70002, x.cfg.node, "default", "client")
    client_ns = x.netns("client")
    # plain allow across nodes: through x's from-pod and y's to-pod
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    # a port the policy does not allow: dropped at y (the server's node), the flow names both pods
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 9090)
    drop = await k8s.until(
        lambda: next(
            (
                f
                for f in y.flows
                if f.verdict == "DROPPED" and f.l4 and f.l4.tcp and f.l4.tcp.destination_port == 9090
            ),
            None,
        )
    )
    assert drop.drop_reason_desc == "POLICY_DENIED" and drop.traffic_direction == "INGRESS"
    assert drop.source is not None and drop.source.pod_name == "client" and drop.source.identity == 70002
    assert drop.destination is not None and drop.destination.pod_name == "server"
    # auth required: y (the enforcing node) signals, naming x as the remote node
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 7070)
    sig = await k8s.until(lambda: next(iter(y.auth), None))
    assert sig.key == AuthKey(
        local_identity=70001, remote_identity=70002, remote_node=x.cfg.node, auth_type=1
    )
    assert sig.remote_ip == client_ip
    await bus.publish(subjects.auth_granted(y.cfg.node), AuthVerdict(key=sig.key, expires=time.time() + 600))
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 7070), 30)
    # the flow is seen at both enforcement points, each on its own node's subject
    assert any(
        f.traffic_direction == "EGRESS" and f.destination and f.destination.pod_name == "server"
        for f in x.flows
    )
    assert any(f.traffic_direction == "INGRESS" and f.verdict == "DROPPED" for f in y.flows)


def _cnp_ports(name: str, ports: range) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                    "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}],
                }
            ],
        },
    }


async def test_privileged_service_full_policy_map_fails_closed(harness: Harness, bus: Bus) -> None:
    """A policy that does not fit the node's policy map denies the endpoint's traffic (never keeps
    older allows while newer entries are missing), says so in the policy's status and a metric, and
    opens again as soon as it fits."""
    import msgspec

    h, node = harness, harness.cfg.node
    h.cfg = msgspec.structs.replace(h.cfg, policy_map_max=16)
    await k8s.put_obj(bus, k8s.pod("server", node, {"app": "server"}, ports=(8080,), probe_port=8080))
    await k8s.put_obj(bus, k8s.pod("client", node, {"app": "client"}))
    await k8s.put_obj(bus, _cnp_ports("small", range(8080, 8081)))
    await k8s.put_identity(bus, 70001, ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_identity(bus, 70002, ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.synced(bus)
    h.start()
    server_ip = await k8s.until(lambda: h.ready_ip("server"), 60)
    client_ip = await k8s.until(lambda: h.ready_ip("client"), 60)
    await k8s.put_ipcache(bus, server_ip, 70001, node, "default", "server")
    await k8s.put_ipcache(bus, client_ip, 70002, node, "default", "client")
    client_ns = h.netns("client")
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    conn = await asyncio.to_thread(tcp_open, client_ns, server_ip, 8080)
    assert await asyncio.to_thread(echo, conn)
    # forty more ports (non-aligned: many entries) for the server: more than the map holds
    await k8s.put_obj(bus, _cnp_ports("big", range(9001, 9041)))

    def full_condition() -> dict[str, Any] | None:
        hist = h.status.get("CiliumNetworkPolicy/default/big") or []
        cond = hist[-1]["conditions"][0] if hist else None
        return cond if cond and cond.get("reason") == "PolicyMapFull" else None

    cond = await k8s.until(full_condition, 30)
    assert cond["status"] == "False" and "default/server" in cond["message"]
    assert "policy map full" in cond["message"]

    def last_condition(name: str) -> dict[str, Any]:
        hist = h.status.get(f"CiliumNetworkPolicy/default/{name}") or [{"conditions": [{}]}]
        return dict(hist[-1]["conditions"][0])

    # the other policy selecting the closed endpoint says so too
    await k8s.until(lambda: last_condition("small").get("reason") == "PolicyMapFull", 30)
    assert "nodemesh_datapath_endpoints_fail_closed 1.0" in await h.metrics()
    # closed, not open: the allowed port and the established connection are denied too
    assert not await asyncio.to_thread(echo, conn, b"after-full")
    conn.close()
    assert not await asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080)
    drop = await k8s.until(
        lambda: next(
            (f for f in h.flows if f.verdict == "DROPPED" and f.drop_reason_desc == "POLICY_DENIED"), None
        )
    )
    assert drop.destination is not None and drop.destination.pod_name == "server"
    # the big policy goes: the server's policy fits again, it opens as written, the status clears
    await k8s.del_obj(bus, "CiliumNetworkPolicy", "default", "big")
    await k8s.until(lambda: asyncio.to_thread(tcp_ok, client_ns, server_ip, 8080), 30)
    await k8s.until(
        lambda: (
            (h.status.get("CiliumNetworkPolicy/default/small") or [{}])[-1]["conditions"][0]["status"]
            == "True"
        ),
        30,
    )
    assert "nodemesh_datapath_endpoints_fail_closed 0.0" in await h.metrics()
