"""The datapath service's part of mutual auth, for tests and benches that drive the BPF datapath
directly (as tests/datapath does): a node's auth-required events → ``auth.required.<node>``, and
``auth.granted.<node>`` → that node's BPF auth map (node names → the datapath's node ids)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nodemesh import subjects
from nodemesh.messages.auth import AuthRequired, AuthVerdict
from services.datapath.maps import EVT_AUTH_REQUIRED, AuthKey
from testkit.authd_cluster import Cluster, key
from testkit.datapath_node import TNode

NODE_IDS = {"node-x": 5, "node-y": 7}
ING = 0


class Glue:
    """The datapath service's part: y's auth-required events → NATS; NATS verdicts → y's auth map."""

    def __init__(self, c: Cluster, y: TNode, node: str = "node-y") -> None:
        self.c, self.y, self.node, self.seen = c, y, node, 0

    async def start(self) -> None:
        async def granted(v: AuthVerdict, _m: Any) -> None:
            k = AuthKey(
                local_identity=v.key.local_identity,
                remote_identity=v.key.remote_identity,
                # the datapath's node ids: 0 is its own node (services/datapath/nodeids.py)
                remote_node_id=0 if v.key.remote_node == self.node else NODE_IDS.get(v.key.remote_node, 0),
                auth_type=v.key.auth_type,
            )
            self.y.maps.set_auth(k, max(0, time.monotonic_ns() + int((v.expires - time.time()) * 1e9)))

        await self.c.bus.subscribe(subjects.auth_granted(self.node), AuthVerdict, granted)

    async def pump(self) -> None:
        names = {v: k for k, v in NODE_IDS.items()}
        while True:
            events = self.y.events
            while self.seen < len(events):
                e = events[self.seen]
                self.seen += 1
                if e.type == EVT_AUTH_REQUIRED and e.dir == ING:
                    remote = names.get(e.remote_node_id, "") if e.remote_node_id else self.node
                    k = key(e.dst_identity, e.src_identity, remote, e.auth_type)
                    await self.c.bus.publish(subjects.auth_required(self.node), AuthRequired(key=k))
            await asyncio.sleep(0.001)
