"""Play the watcher on a real nats-server: publish objects and the Synced marker on the K8S stream,
and node entries in the nodes bucket (tests/datapath, bench/lb)."""

from __future__ import annotations

import uuid
from typing import Any

from nodemesh import kinds, subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.messages.identity import NodeInfo
from nodemesh.messages.k8s import ObjectEvent, Synced

__all__ = ["put_node", "put_obj", "synced"]


async def put_obj(bus: Bus, obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", str(uuid.uuid4()))
    ns = meta.get("namespace", "") if kinds.by_kind(kind).namespaced else ""
    if kinds.by_kind(kind).namespaced and not ns:
        ns = meta["namespace"] = "default"
    ev = ObjectEvent(
        type="upsert", kind=kind, api_version=obj.get("apiVersion", kinds.by_kind(kind).api_version),
        namespace=ns, name=meta["name"], uid=meta["uid"], obj=obj,
    )  # fmt: skip
    await bus.js_publish(subjects.k8s_object(kind, ns, meta["name"]), ev)


async def synced(bus: Bus) -> None:
    info = await bus.js.stream_info("K8S")
    await bus.js_publish(
        subjects.K8S_SYNCED, Synced(watcher="test", epoch=1, stream_seq=int(info.state.last_seq) + 1)
    )


async def put_node(bus: Bus, name: str, address: str, pod_cidr: str) -> None:
    kv = await bus.kv("nodes")
    await kv.put(name, encode(NodeInfo(name=name, address=address, pod_cidr=pod_cidr)))
