"""Test helpers that play the watcher and the identity service on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from nodemesh import kinds, subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.messages.identity import Identity, IPCacheEntry
from nodemesh.messages.k8s import ObjectEvent
from nodemesh.streams import ipcache_key
from testkit.k8sstream import put_node, put_obj, synced

__all__ = ["del_obj", "pod", "put_identity", "put_ipcache", "put_node", "put_obj", "synced", "until"]


async def del_obj(bus: Bus, kind: str, namespace: str, name: str) -> None:
    ev = ObjectEvent(
        type="delete", kind=kind, api_version=kinds.by_kind(kind).api_version, namespace=namespace, name=name
    )
    await bus.js_publish(subjects.k8s_object(kind, namespace, name), ev)


async def put_identity(bus: Bus, ident: int, labels: list[str]) -> None:
    kv = await bus.kv("identities")
    await kv.put(f"id.{ident}", encode(Identity(id=ident, labels=sorted(labels))))


async def put_ipcache(bus: Bus, ip: str, ident: int, node: str, namespace: str = "", pod: str = "") -> None:
    kv = await bus.kv("ipcache")
    entry = IPCacheEntry(ip=ip, identity=ident, node=node, namespace=namespace, pod=pod)
    await kv.put(ipcache_key(ip), encode(entry))


async def until(cond: Any, timeout: float = 30.0) -> Any:
    """Poll ``cond()`` (sync or async) until truthy; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in {timeout}s")
        await asyncio.sleep(0.05)


ECHO_SERVER = r"""
import os, socket, threading, sys
e = os.environ.get
print("pod", e("POD_NAME"), "ns", e("POD_NAMESPACE"), "ip", e("POD_IP"), "node", e("NODE_NAME"), flush=True)
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        def echo(c=c):
            with c:
                while True:
                    d = c.recv(4096)
                    if not d: return
                    c.sendall(d)
        threading.Thread(target=echo, daemon=True).start()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"""


def pod(
    name: str, node: str, labels: dict[str, str], ports: tuple[int, ...] = (), probe_port: int = 0
) -> dict[str, Any]:
    import sys

    container: dict[str, Any] = {
        "name": "main",
        "image": "local/python",
        "command": [sys.executable, "-c", ECHO_SERVER, *map(str, ports)],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
    }
    if probe_port:
        container["readinessProbe"] = {"tcpSocket": {"port": probe_port}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [container]},
    }
