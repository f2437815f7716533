"""The services wired together: two nodes' datapath services (pods, maps, proxy settings and route)
and the xds service (L7 policy listeners from the K8S stream) serving each node's real Envoy over ADS;
a CiliumNetworkPolicy with HTTP rules from the K8S stream is enforced on real traffic between real pod
workloads on one node and on two, and its L4 and L7 flows arrive on NATS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conformance.envoy import Envoy
from nodemesh.bus import Bus
from nodemesh.netns import scope_for
from services.datapath.cleanup import cleanup_all
from services.datapath.config import DatapathConfig
from testkit.natsserver import NatsServer, free_port
from testkit.placement import PLACEMENTS, spread
from tests.datapath import k8s
from tests.datapath.test_privileged_service import Harness
from tests.l7policy.test_privileged_l7policy import cnp, request
from tests.xds.test_envoy_app import replica

pytestmark = pytest.mark.privileged


def echo_pod(name: str, node: str) -> dict[str, Any]:
    """An HTTP echo server (echoserver.echo) on 8080 and 9090."""
    c = {
        "name": "main",
        "image": "local/python",
        "command": [
            sys.executable,
            "-c",
            "import sys, runpy; runpy.run_module('echoserver.echo', run_name='__main__')",
        ],
        "env": [
            {"name": "HTTP_PORT", "value": "8080"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [c]},
    }


class Nodes:
    """Two simulated nodes, each with its own datapath service (one naming scope for both, as a local
    cluster gives them), and the client/server placement."""

    def __init__(self, hs: list[Harness], placement: str) -> None:
        self.hs = hs
        self.client, self.server = spread(placement, hs)

    @property
    def names(self) -> list[str]:
        return [h.cfg.node for h in self.hs]


@pytest.fixture(params=PLACEMENTS)
async def nodes(
    request: Any, nats_server: NatsServer, bus: Bus, pin_root: str, tmp_path: Path
) -> AsyncIterator[Nodes]:
    token = secrets.token_hex(3)
    scope = scope_for(str(tmp_path))  # the cluster's, as localcluster passes NODEMESH_SCOPE
    hs: list[Harness] = []
    await k8s.put_obj(bus, {"kind": "Namespace", "metadata": {"name": "default"}})
    for i in (1, 2):
        node = f"l{token}{i}"
        cidr = f"10.{200 + int(token[:2], 16) % 50}.{(int(token[2:4], 16) + i) % 256}.0/24"
        # the node's address (Envoy's policy listeners bind there): unique per run
        node_ip = f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
        cfg = DatapathConfig(
            nats_url=nats_server.url, node=node, data_dir=str(tmp_path / "nodes" / node), pin_root=pin_root,
            pod_cidr="", node_ip=node_ip, log_format="text", health_addr=f"127.0.0.1:{free_port()}",
            auth_gate_timeout=0.0,  # the test plays the identity service once pods run: no start gate
            scope=scope, lb_host_sockets=i == 1,
        )  # fmt: skip
        h = Harness(bus, cfg)
        await h.subscribe()
        node_obj = {
            "kind": "Node",
            "metadata": {"name": node},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip}]},
        }
        await k8s.put_obj(bus, node_obj)
        await k8s.put_node(bus, node, node_ip, cidr)
        hs.append(h)
    try:
        yield Nodes(hs, request.param)
    finally:
        for h in hs:
            with contextlib.suppress(Exception):
                await h.shutdown()
        cleanup_all(str(tmp_path))


async def test_privileged_l7_policy_through_the_services(
    nodes: Nodes, bus: Bus, nats_server: NatsServer
) -> None:
    cl, sv = nodes.client, nodes.server
    server, client = echo_pod("b", sv.cfg.node), k8s.pod("a", cl.cfg.node, {"app": "a"})
    for obj in (server, client, cnp("ingress", l7=True)):
        await k8s.put_obj(bus, obj)
    await k8s.synced(bus)
    for h in nodes.hs:
        h.start()
    b_ip = await k8s.until(lambda: sv.ready_ip("b"), 60)
    a_ip = await k8s.until(lambda: cl.ready_ip("a"), 60)
    # the identity service's part, and the watcher's (the pods' status back in the K8S stream)
    await k8s.put_identity(bus, 70001, ["k8s:app=b", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_identity(bus, 70002, ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=default"])
    await k8s.put_ipcache(bus, b_ip, 70001, sv.cfg.node, "default", "b")
    await k8s.put_ipcache(bus, a_ip, 70002, cl.cfg.node, "default", "a")
    for obj, ip in ((server, b_ip), (client, a_ip)):
        await k8s.put_obj(bus, {**obj, "status": {"podIP": ip, "phase": "Running"}})
    await k8s.synced(bus)

    async with replica(nats_server.url, bus, nodes=",".join(nodes.names)) as xds:
        envoys = []
        for h in nodes.hs:
            als = str(Path(h.cfg.data_dir) / "als.sock")  # the node's datapath's access log receiver
            envoys.append(Envoy(xds.bootstrap(h.cfg.node, als_socket=als), name=f"envoy@{h.cfg.node}"))
        for envoy in envoys:
            envoy.start()
        try:
            a_ns = cl.netns("a")

            async def get(path: str, method: str = "GET", port: int = 8080) -> tuple[int, str]:
                return await asyncio.to_thread(request, a_ns, b_ip, port, method, path, 3.0)

            async def public_ok() -> tuple[int, str] | None:
                r = await get("/public/x")
                return r if r[0] == 200 else None

            _, body = await k8s.until(public_ok, 60)
            echoed = json.loads(body)
            assert echoed["pod"] == "b" and echoed["path"] == "/public/x"
            assert "X-Request-Id" in echoed["headers"]  # through Envoy
            assert await get("/private") == (403, "Access denied\r\n")
            assert (await get("/public", "POST"))[0] == 403

            # on the server's node: the L4 flow is REDIRECTED, the denied request an L7 DROPPED flow
            await k8s.until(
                lambda: any(
                    f.verdict == "REDIRECTED" and f.l4 and f.l4.tcp and f.l4.tcp.destination_port == 8080
                    for f in sv.flows
                ),
                30,
            )
            await k8s.until(
                lambda: any(
                    f.verdict == "DROPPED" and f.l7 and f.l7.http and f.l7.http.code == 403 for f in sv.flows
                ),
                30,
            )

            # the rule goes: new connections are plain L4 again (no Envoy in the path)
            await k8s.put_obj(bus, cnp("ingress", l7=False))

            async def direct() -> bool:
                status, body = await get("/private")
                return status == 200 and "X-Request-Id" not in json.loads(body)["headers"]

            await k8s.until(direct, 60)
        finally:
            for envoy in envoys:
                envoy.stop()
