"""Objects a fresh local cluster starts with: namespaces, one Node per simulated node, classes.

Namespaces ``default`` and ``kube-system``, the Nodes and (when the cluster runs a DNS server) the
``kube-system/kube-dns`` Service are ensured on every start. The node count may change between
starts: local nodes beyond it (``nodemesh.io/local``, named ``node-<i>``) are deleted with the pods
bound to them, whose controllers then recreate them on the remaining nodes. With ``heartbeats``
(node agents post the Ready condition, controllers/nodelifecycle.py) a new Node starts as
``Ready=Unknown`` until its agent's first heartbeat; without, Nodes are simply Ready. The
GatewayClasses ``nodemesh``/``cilium`` and IngressClasses ``nodemesh``/``cilium`` only on the first
start, so a user who deletes one keeps it deleted.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

from localcluster.apiserver.controllers.clusterdns import ensure_dns_service
from localcluster.apiserver.controllers.util import set_status
from localcluster.apiserver.store import Store
from nodemesh import __version__
from nodemesh.kinds import by_kind

__all__ = ["bootstrap", "node_object"]

log = logging.getLogger("localcluster.apiserver.bootstrap")


def node_object(i: int) -> dict[str, Any]:
    name = f"node-{i}"
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                LOCAL_LABEL: "true",
            },
        },
        "spec": {"podCIDR": f"10.244.{i}.0/24", "podCIDRs": [f"10.244.{i}.0/24"]},
    }


LOCAL_LABEL = "nodemesh.io/local"


def _node_status(i: int) -> dict[str, Any]:
    return {
        "addresses": [
            {"type": "InternalIP", "address": f"127.0.50.{i}"},
            {"type": "Hostname", "address": f"node-{i}"},
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "nodemesh local node is ready",
            }
        ],
        # Every field NodeSystemInfo requires, so typed clients can decode the Node.
        "nodeInfo": {
            "architecture": platform.machine().replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "bootID": "",
            "containerRuntimeVersion": "nodemesh://netns",
            "kernelVersion": platform.release(),
            "kubeProxyVersion": "",
            "kubeletVersion": f"v1.33.0-nodemesh-{__version__}",
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": "nodemesh local node",
            "systemUUID": "",
        },
    }


def _ensure(store: Store, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    k = by_kind(kind)
    cur = store.peek(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
    return cur if cur is not None else store.create(k, obj, validate=False)


def _local_index(node: dict[str, Any]) -> int:
    """i of a local node ``node-<i>`` (0: not one of ours)."""
    meta = node["metadata"]
    name = str(meta.get("name") or "")
    if (meta.get("labels") or {}).get(LOCAL_LABEL) != "true" or not name.startswith("node-"):
        return 0
    return int(name[5:]) if name[5:].isdigit() else 0


def remove_extra_nodes(store: Store, nodes: int) -> list[str]:
    """Delete the local nodes beyond ``nodes`` and the pods bound to them; their names."""
    removed = []
    for node in list(store.objects("Node")):
        name = node["metadata"]["name"]
        if _local_index(node) <= nodes:
            continue
        for pod in list(store.objects("Pod")):
            if (pod.get("spec") or {}).get("nodeName") == name:
                store.delete(by_kind("Pod"), pod["metadata"]["namespace"], pod["metadata"]["name"])
        store.delete(by_kind("Node"), "", name)
        removed.append(name)
    if removed:
        log.info("removed nodes beyond node-%d and their pods: %s", nodes, ", ".join(removed))
    return removed


#: The CiliumLoadBalancerIPPool local mode starts with (the operator's LB-IPAM gives out its addresses).
LOCAL_POOL = "local"


def bootstrap(
    store: Store, nodes: int, dns_addr: str = "", heartbeats: bool = False, lb_pool: str = ""
) -> None:
    for ns in ("default", "kube-system"):
        _ensure(store, "Namespace", {"metadata": {"name": ns}})
    if dns_addr and ensure_dns_service(store) is None:
        log.error("kube-system/kube-dns not created: another Service holds its ClusterIP")
    remove_extra_nodes(store, nodes)
    for i in range(1, nodes + 1):
        node = _ensure(store, "Node", node_object(i))
        status = _node_status(i)
        if heartbeats:
            # Readiness is the node agent's to report; until it does, nothing vouches for the node.
            status.pop("conditions")
            if not (node.get("status") or {}).get("conditions"):
                status["conditions"] = [
                    {
                        "type": "Ready",
                        "status": "Unknown",
                        "reason": "NodeStatusNeverUpdated",
                        "message": "Kubelet never posted node status.",
                    }
                ]
        set_status(store, node, status)
    if store.get_meta("bootstrapped") is None:
        classes = (
            ("nodemesh", "nodemesh.io/gateway-controller", "nodemesh.io/ingress-controller"),
            ("cilium", "io.cilium/gateway-controller", "cilium.io/ingress-controller"),
        )
        for name, gw_ctrl, ing_ctrl in classes:
            _ensure(store, "GatewayClass", {"metadata": {"name": name}, "spec": {"controllerName": gw_ctrl}})
            _ensure(store, "IngressClass", {"metadata": {"name": name}, "spec": {"controller": ing_ctrl}})
        if lb_pool:
            # Once, like the classes: a pool the user deletes or edits stays as the user left it.
            _ensure(
                store,
                "CiliumLoadBalancerIPPool",
                {"metadata": {"name": LOCAL_POOL}, "spec": {"blocks": [{"cidr": lb_pool}]}},
            )
        store.set_meta("bootstrapped", "1")
