"""authd with the real identity service: identities, ipcache, nodes and SVIDs all come from it, and
its CA accepts authd's CSRs. Pods and a policy go in as the watcher would publish them."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from typing import Any

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.runtime import Service, run_service
from services.identity.app import main as identity_main
from services.identity.config import IdentityConfig
from testkit.authd_cluster import Seen, key, poll
from testkit.natsserver import NatsServer
from tests.authd.test_paths import INGRESS_AUTH

# Addresses no other test uses: the identity service always announces auth port 4250.
NODES = {"node-1": ("127.0.53.1", "10.244.1.0/24"), "node-2": ("127.0.53.2", "10.244.2.0/24")}


async def _put(bus: Bus, kind: str, obj: dict[str, Any], api: str = "v1") -> None:
    meta = obj["metadata"]
    ns = meta.get("namespace", "")
    await bus.js_publish(
        subjects.k8s_object(kind, ns, meta["name"]),
        ObjectEvent(type="upsert", kind=kind, api_version=api, namespace=ns, name=meta["name"], obj=obj),
    )


async def test_authd_with_the_identity_service(nats_server: NatsServer, bus: Bus) -> None:
    from testkit.authd_cluster import Cluster  # reuse start_authd

    seen = Seen()
    await seen.start(bus)
    await _put(
        bus,
        "Namespace",
        {"metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}},
    )
    for name, (ip, cidr) in NODES.items():
        addrs = [{"type": "InternalIP", "address": ip}]
        await _put(
            bus,
            "Node",
            {"metadata": {"name": name}, "spec": {"podCIDR": cidr}, "status": {"addresses": addrs}},
        )
    for name, app, node, ip in (
        ("client", "client", "node-1", "10.244.1.10"),
        ("server", "server", "node-2", "10.244.2.10"),
    ):
        await _put(
            bus,
            "Pod",
            {
                "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                "spec": {"nodeName": node, "serviceAccountName": "default"},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            },
        )
    obj = {
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": INGRESS_AUTH,
    }
    await _put(bus, "CiliumNetworkPolicy", obj, "cilium.io/v2")
    info = await bus.js.stream_info("K8S")
    await bus.js_publish(
        subjects.K8S_SYNCED, Synced(watcher="test", epoch=1, stream_seq=int(info.state.last_seq))
    )

    with tempfile.TemporaryDirectory(prefix="nm-authd-id-") as tmp:
        stop = asyncio.Event()
        holder: dict[str, Service] = {}

        async def main(svc: Service) -> None:
            holder["svc"] = svc
            await identity_main(svc)

        cfg = IdentityConfig(nats_url=nats_server.url, data_dir=f"{tmp}/identity", log_level="warning")
        task = asyncio.create_task(run_service("identity", cfg, main, install_signals=False, stop=stop))
        c = Cluster(bus, nats_server.url, None, tmp)  # type: ignore[arg-type]
        c.ports = {"node-1": 4250, "node-2": 4250}
        try:
            await c.start_authd("node-1")
            await c.start_authd("node-2")
            m2 = c.manager("node-2")
            await poll(lambda: m2.desired, 60, "node-2 to compute the pair from the identity service's data")
            (k,) = m2.desired
            assert k.remote_node == "node-1"
            await poll(lambda: seen.grants("node-2", k), 60, "a verdict with SVIDs from the real CA")
            assert not seen.grants("node-2", key(k.local_identity, k.remote_identity, "node-2"))
        finally:
            await c.stop_all()
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 20)
