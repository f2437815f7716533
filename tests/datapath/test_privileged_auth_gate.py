"""The datapath service holds a new pod's workload until the auth verdicts its policy needs are in the
real BPF auth map (services/datapath/authgate.py), and starts it after ``auth_gate_timeout`` anyway,
saying so in the pod's ``nodemesh.io/AuthReady`` condition and in a metric. The test plays the
identity service (identities, ipcache) and authd (grants on ``auth.granted.<node>``)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.auth import AuthKey, AuthVerdict
from services.datapath.cleanup import cleanup_all
from services.datapath.config import DatapathConfig
from testkit.natsserver import NatsServer, free_port
from tests.datapath import k8s
from tests.datapath.test_privileged_service import CNP_ALLOW, Harness

pytestmark = pytest.mark.privileged

SERVER, CLIENT = 70001, 70002
SERVER_LABELS = ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"]
CLIENT_LABELS = ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"]


@pytest.fixture
async def harness(nats_server: NatsServer, bus: Bus, pin_root: str, tmp_path: Path) -> AsyncIterator[Harness]:
    token = secrets.token_hex(3)
    node, peer = f"g{token}", f"p{token}"
    cidr = f"10.{200 + int(token[:2], 16) % 50}.{int(token[2:4], 16)}.0/24"
    cfg = DatapathConfig(
        nats_url=nats_server.url, node=node, data_dir=str(tmp_path / "nodes" / node), pin_root=pin_root,
        pod_cidr=cidr, node_ip="127.0.50.249", log_format="text", health_addr=f"127.0.0.1:{free_port()}",
        auth_gate_timeout=3.0,
    )  # fmt: skip
    h = Harness(bus, cfg)
    await h.subscribe()
    await k8s.put_obj(bus, {"kind": "Namespace", "metadata": {"name": "default"}})
    await k8s.put_node(bus, node, cfg.node_ip, cidr)
    await k8s.put_node(bus, peer, "127.0.50.248", "10.251.0.0/24")
    # the client runs on the other node; CNP_ALLOW requires auth from it to the server (port 7070)
    await k8s.put_identity(bus, SERVER, SERVER_LABELS)
    await k8s.put_identity(bus, CLIENT, CLIENT_LABELS)
    await k8s.put_ipcache(bus, "10.251.0.7", CLIENT, peer, "default", "client")
    await k8s.put_obj(bus, CNP_ALLOW)
    try:
        yield h
    finally:
        with contextlib.suppress(Exception):
            await h.shutdown()
        cleanup_all(str(tmp_path))


def _history(h: Harness, name: str) -> list[dict[str, Any]]:
    return h.status.get(f"Pod/default/{name}", [])


def _auth_ready(st: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == "nodemesh.io/AuthReady")


async def test_privileged_new_pod_starts_once_its_auth_verdicts_are_in_the_map(
    harness: Harness, bus: Bus
) -> None:
    h, node = harness, harness.cfg.node
    peer = "p" + node[1:]
    key = AuthKey(local_identity=SERVER, remote_identity=CLIENT, remote_node=peer, auth_type=1)
    await k8s.put_obj(bus, k8s.pod("server", node, {"app": "server"}, ports=(7070,)))
    await k8s.synced(bus)
    h.start()
    # the pod's IP goes out first, its workload not started yet: play the identity service
    first = await k8s.until(lambda: next((s for s in _history(h, "server") if s.get("podIP")), None), 60)
    assert first["phase"] == "Pending"
    assert first["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    await k8s.put_ipcache(bus, first["podIP"], SERVER, node, "default", "server")
    log = Path(h.cfg.data_dir) / "pods" / "default_server.log"
    await asyncio.sleep(1.0)  # the gate now knows what to wait for: (server, client, peer) in the map
    assert not log.exists() and all(s["phase"] == "Pending" for s in _history(h, "server"))
    await bus.publish(subjects.auth_granted(node), AuthVerdict(key=key, expires=time.time() + 600))
    running = await k8s.until(lambda: (s := h.pod_status("server")) and s["phase"] == "Running" and s, 30)
    assert _auth_ready(running) | {"lastTransitionTime": ""} == {
        "type": "nodemesh.io/AuthReady",
        "status": "True",
        "reason": "AuthReady",
        "message": "1 auth verdict(s) in place before start",
        "lastTransitionTime": "",
    }
    await k8s.until(lambda: log.exists() and "pod server" in log.read_text(), 30)

    # the verdict revoked, a second replica of the server: nothing arrives, it starts after the bound
    await bus.publish(subjects.auth_revoked(node), AuthVerdict(key=key, expires=time.time() + 600))
    await k8s.put_obj(bus, k8s.pod("server-2", node, {"app": "server"}, ports=(7070,)))
    pending = await k8s.until(lambda: next((s for s in _history(h, "server-2") if s.get("podIP")), None), 60)
    await k8s.put_ipcache(bus, pending["podIP"], SERVER, node, "default", "server-2")
    late = await k8s.until(lambda: (s := h.pod_status("server-2")) and s["phase"] == "Running" and s, 30)
    cond = _auth_ready(late)
    assert cond["status"] == "False" and cond["reason"] == "AuthTimeout", cond
    assert f"{node}:{SERVER}->{CLIENT}@{peer}/1" in cond["message"], cond
    assert "nodemesh_datapath_auth_gate_timeouts_total 1.0" in await h.metrics()
