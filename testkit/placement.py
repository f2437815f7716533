"""Pods on chosen nodes: every traffic test runs with client and server on one node and on two.

Simulated nodes (``testkit.datapath_node.TNode``) made by one test share a pin root, as the nodes of a
local cluster share their scope directory (``NODEMESH_SCOPE``, localcluster/processes.py): maps the
nodes share (the L7 redirect's ``nm_proxy_flows``) are found by all of them. What a real agent adds
for pods on other nodes, their ipcache entries, ``share_ipcache`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from services.datapath.maps import IPCacheValue
from testkit.datapath_node import TNode

__all__ = ["CROSS_NODE", "PLACEMENTS", "SAME_NODE", "node_count", "share_ipcache", "spread"]

SAME_NODE = "same-node"
CROSS_NODE = "cross-node"
PLACEMENTS = (SAME_NODE, CROSS_NODE)
"""``pytest.mark.parametrize("placement", PLACEMENTS)`` (the ids say where the pods are)."""

N = TypeVar("N")


def node_count(placement: str) -> int:
    """How many nodes the placement needs."""
    return {SAME_NODE: 1, CROSS_NODE: 2}[placement]


def spread(placement: str, nodes: Sequence[N]) -> tuple[N, N]:
    """(the client's node, the server's node) for ``placement``."""
    if placement == SAME_NODE:
        return nodes[0], nodes[0]
    if placement == CROSS_NODE:
        if len(nodes) < 2:
            raise ValueError("a cross-node placement needs two nodes")
        return nodes[0], nodes[1]
    raise ValueError(f"unknown placement {placement!r}; one of {PLACEMENTS}")


def share_ipcache(nodes: Sequence[TNode]) -> None:
    """Every node's ipcache gets the pods of the other nodes (identity, and node id = the other node's
    position + 1: 0 means this node), as agents mirror the cluster's ipcache."""
    for i, node in enumerate(nodes):
        for j, other in enumerate(nodes):
            if i == j:
                continue
            for p in other.pods:
                node.maps.set_ipcache(f"{p.ip}/32", IPCacheValue(identity=p.identity, node_id=j + 1))
