"""The node's heartbeat: in local mode the datapath is the node's kubelet and posts its Ready condition.

Every ``every`` seconds (a quarter of the API server's node grace period) it publishes a status patch
for its own Node on ``k8s.status.node._.<node>`` (NATS permissions allow no other node's), which the
active watcher writes to the API like any status patch. The API server's node lifecycle controller
(localcluster/apiserver/controllers/nodelifecycle.py) turns a Node whose heartbeats stop into
``Ready=Unknown``, taints it and evicts its pods. ``lastTransitionTime`` is kept from the Node as last
seen while it stays Ready, so a heartbeat is no transition.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.k8s import StatusPatch

__all__ = ["heartbeat_patch", "run_heartbeat"]

log = logging.getLogger("nodemesh.datapath.heartbeat")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_patch(node: str, current: dict[str, Any] | None, now: str) -> StatusPatch:
    """The Ready condition as the kubelet posts it, given the Node as last seen (None: unknown)."""
    since = now
    for c in ((current or {}).get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True":
            since = str(c.get("lastTransitionTime") or now)
    cond = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "nodemesh datapath is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": since,
    }
    return StatusPatch(
        kind="Node",
        api_version="v1",
        namespace="",
        name=node,
        status={"conditions": [cond]},
        field_manager="nodemesh-datapath",
    )


async def run_heartbeat(
    bus: Bus, node: str, every: float, current: Callable[[], dict[str, Any] | None]
) -> None:
    while True:
        try:
            await bus.publish(subjects.k8s_status("Node", "", node), heartbeat_patch(node, current(), _now()))
        except Exception as e:  # NATS away: the next beat tries again (the grace period allows misses)
            log.warning("node heartbeat not sent: %r", e)
        await asyncio.sleep(every)
