"""Pods on chosen simulated nodes: every traffic test runs with client and server on the same node
and on two nodes (each node's programs and maps, each node's ipcache knowing the other's pods)."""

from __future__ import annotations

from collections.abc import Callable

from nodemesh.policy.model import EndpointPolicy
from services.datapath.maps import IPCacheValue
from testkit.datapath_node import TNode, TPod

WHERE = ("same-node", "cross-node")
#: the id each node's agent would give the other node (agent-local node ids; 0 = this node)
NODE_IDS = {"x": 5, "y": 7}
NODE_NAMES = {"x": "node-x", "y": "node-y"}


class Placed:
    """Node ``x`` and, cross-node, node ``y`` (same-node: ``y`` is ``x``)."""

    def __init__(self, make_node: Callable[..., TNode], where: str, defines: dict[str, int] | None = None):
        assert where in WHERE, where
        self.x = make_node("x", defines)
        self.y = make_node("y", defines) if where == "cross-node" else self.x
        self._home: dict[str, str] = {}
        self._pods: list[TPod] = []

    @property
    def nodes(self) -> list[TNode]:
        return [self.x] if self.y is self.x else [self.x, self.y]

    def pod(self, name: str, ip: str, identity: int, on: str = "x") -> TPod:
        node = self.x if on == "x" else self.y
        home = "x" if node is self.x else "y"
        p = node.add_pod(name, ip, identity)
        self._home[name] = home
        for other in self.nodes:
            if other is not node:
                other.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=identity, node_id=NODE_IDS[home]))
        self._pods.append(p)
        return p

    def node(self, pod: TPod) -> TNode:
        return self.x if self._home[pod.name] == "x" else self.y

    def node_id_seen_from(self, pod: TPod, peer: TPod) -> int:
        """The node id of ``peer``'s node in ``pod``'s node's maps (0 = the same node)."""
        return 0 if self._home[pod.name] == self._home[peer.name] else NODE_IDS[self._home[peer.name]]

    def node_name(self, pod: TPod) -> str:
        return NODE_NAMES[self._home[pod.name]]

    def set_policy(self, pod: TPod, policy: EndpointPolicy) -> None:
        self.node(pod).set_policy(pod, policy)
