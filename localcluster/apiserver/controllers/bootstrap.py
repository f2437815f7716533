"""Objects a fresh local cluster starts with: namespaces, one Node per simulated node, classes.

Namespaces ``default`` and ``kube-system``, the Nodes and (when the cluster runs a DNS server) the
``kube-system/kube-dns`` Service are ensured on every start (the node count may change); the
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
                "nodemesh.io/local": "true",
            },
        },
        "spec": {"podCIDR": f"10.244.{i}.0/24", "podCIDRs": [f"10.244.{i}.0/24"]},
    }


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


def bootstrap(store: Store, nodes: int, dns_addr: str = "") -> None:
    for ns in ("default", "kube-system"):
        _ensure(store, "Namespace", {"metadata": {"name": ns}})
    if dns_addr and ensure_dns_service(store) is None:
        log.error("kube-system/kube-dns not created: another Service holds its ClusterIP")
    for i in range(1, nodes + 1):
        node = _ensure(store, "Node", node_object(i))
        set_status(store, node, _node_status(i))
    if store.get_meta("bootstrapped") is None:
        classes = (
            ("nodemesh", "nodemesh.io/gateway-controller", "nodemesh.io/ingress-controller"),
            ("cilium", "io.cilium/gateway-controller", "cilium.io/ingress-controller"),
        )
        for name, gw_ctrl, ing_ctrl in classes:
            _ensure(store, "GatewayClass", {"metadata": {"name": name}, "spec": {"controllerName": gw_ctrl}})
            _ensure(store, "IngressClass", {"metadata": {"name": name}, "spec": {"controller": ing_ctrl}})
        store.set_meta("bootstrapped", "1")
