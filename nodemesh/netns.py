"""How pods' network namespaces and host-side links are named (shared by every per-node component).

The datapath creates ``nm-<hash>`` namespaces and ``lxc<hash>`` links; authd's Workload API and
``nodemesh exec`` find a pod's namespace by the same name. Names are stable per (scope, node,
namespace, pod), so a restarted agent finds its pods again.
"""

from __future__ import annotations

import hashlib
import os

__all__ = [
    "NETNS_DIR",
    "cni_host_ifname",
    "host_ifname",
    "netns_exists",
    "netns_name",
    "netns_path",
    "scope_for",
]

NETNS_DIR = "/run/netns"


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def scope_for(data_dir: str) -> str:
    """A short token naming one agent's state (its data dir): several local clusters on one machine
    may all have a ``node-1`` with a ``default/web`` pod, and must not share netns, links or pins."""
    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:8]


def netns_name(node: str, namespace: str, pod: str, scope: str = "") -> str:
    """``nm-<hash>``: stable per (scope, node, namespace, pod), so a restarted agent finds it again."""
    parts = (scope, node, namespace, pod) if scope else (node, namespace, pod)
    return f"nm-{_digest(*parts)[:16]}"


def host_ifname(node: str, namespace: str, pod: str, scope: str = "") -> str:
    """``lxc<11 hex>`` (14 characters, within IFNAMSIZ)."""
    parts = (scope, node, namespace, pod) if scope else (node, namespace, pod)
    return f"lxc{_digest(*parts)[:11]}"


def cni_host_ifname(container_id: str) -> str:
    """``lxc<11 hex>`` of a pod plumbed by ``nodemesh-cni`` in standalone mode, from the container id
    alone: the plugin can then remove it on DEL even while the node's datapath is down."""
    return f"lxc{_digest('cni', container_id)[:11]}"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))
