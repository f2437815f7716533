"""Defaults kube-apiserver fills in on write (its registry strategies and default admission).

- Namespace: the label ``kubernetes.io/metadata.name`` (NamespaceDefaultLabelName), phase Active.
- Service: ``type: ClusterIP``, port ``protocol: TCP`` and ``targetPort`` = ``port``, and a
  ``spec.clusterIP``/``clusterIPs`` allocated from the service CIDR (``10.96.0.0/16`` by default,
  ``.1`` reserved as Kubernetes reserves it for the ``kubernetes`` Service, ``.10`` for ``kube-dns``
  as kubeadm's convention has it, so pods' resolv.conf can name it up front). ``clusterIP: None``
  (headless) is kept; on update an omitted clusterIP keeps the allocated one, as kube-apiserver does.
  NodePort and LoadBalancer Services (unless ``allocateLoadBalancerNodePorts: false``) get a
  ``nodePort`` per port from 30000-32767 (the lowest free one; an update that omits it keeps the
  allocated one).
- Pod (when the API server monitors node heartbeats): DefaultTolerationSeconds — tolerations of
  ``node.kubernetes.io/not-ready`` and ``node.kubernetes.io/unreachable`` (``NoExecute``) for
  ``toleration_seconds`` (kube-apiserver's ``--default-not-ready-toleration-seconds`` and
  ``--default-unreachable-toleration-seconds``, 300 s), unless the pod tolerates them itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from nodemesh.kinds import Kind

__all__ = ["DNS_SERVICE_IP", "NODE_PORT_RANGE", "SERVICE_CIDR", "admit"]

SERVICE_CIDR = "10.96.0.0/16"
#: kube-dns' ClusterIP (kubelet's ``--cluster-dns``): never allocated to another Service.
DNS_SERVICE_IP = "10.96.0.10"
NODE_PORT_RANGE = range(30000, 32768)  # kube-apiserver's --service-node-port-range default


def admit(
    kind: Kind,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    services: Iterable[dict[str, Any]],
    service_cidr: str = SERVICE_CIDR,
    toleration_seconds: int | None = None,
) -> None:
    """Fill in defaults on ``obj`` (being created when ``old`` is None) in place."""
    if kind.kind == "Pod" and old is None and toleration_seconds is not None:
        _default_tolerations(obj, toleration_seconds)
    if kind.kind == "Namespace":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif kind.kind == "Service":
        _service(obj, old, list(services), service_cidr)  # read twice: cluster IPs, node ports


def _default_tolerations(pod: dict[str, Any], seconds: int) -> None:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    tols = spec.get("tolerations")
    if tols is None:
        tols = spec["tolerations"] = []
    if not isinstance(tols, list):
        return  # malformed: validation reports it
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(
            isinstance(t, dict)
            and t.get("effect", "") in ("", "NoExecute")
            and (t.get("key") == key or (not t.get("key") and t.get("operator") == "Exists"))
            for t in tols
        ):
            tols.append(
                {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
            )


def _service(
    obj: dict[str, Any], old: dict[str, Any] | None, services: Iterable[dict[str, Any]], cidr: str
) -> None:
    if old is None:
        obj.setdefault("status", {"loadBalancer": {}})  # what ServiceStatus{} serializes to
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "port" in p:
                p.setdefault("targetPort", p["port"])
    if spec["type"] == "ExternalName":
        return
    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
    if not spec.get("clusterIP") and old_ip:
        spec["clusterIP"] = old_ip
    if not spec.get("clusterIP"):
        spec["clusterIP"] = _allocate(services, cidr, obj["metadata"])
    if spec["clusterIP"] and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    if spec["type"] == "NodePort" or (
        spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False
    ):
        _node_ports(spec, old, services, obj["metadata"])


def _node_ports(
    spec: dict[str, Any], old: dict[str, Any] | None, services: Iterable[dict[str, Any]], meta: dict[str, Any]
) -> None:
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    old_ports = [p for p in ((old or {}).get("spec") or {}).get("ports") or [] if isinstance(p, dict)]
    used: set[int] = set()
    for s in services:
        sm = s["metadata"]
        if (sm.get("namespace"), sm["name"]) == (meta.get("namespace"), meta["name"]):
            continue
        for p in (s.get("spec") or {}).get("ports") or []:
            if isinstance(p, dict) and isinstance(p.get("nodePort"), int):
                used.add(p["nodePort"])
    used |= {p["nodePort"] for p in ports if isinstance(p.get("nodePort"), int)}
    for p in ports:
        if p.get("nodePort"):
            continue
        prev = next(
            (
                o.get("nodePort")
                for o in old_ports
                if (o.get("name"), o.get("port"), o.get("protocol", "TCP"))
                == (p.get("name"), p.get("port"), p["protocol"])
            ),
            None,
        )
        if isinstance(prev, int) and prev not in used:
            p["nodePort"] = prev
        else:
            free = next((n for n in NODE_PORT_RANGE if n not in used), None)
            if free is None:
                return  # range exhausted: leave it unset rather than fail the write
            p["nodePort"] = free
        used.add(p["nodePort"])


def _allocate(services: Iterable[dict[str, Any]], cidr: str, meta: dict[str, Any]) -> str:
    used = set()
    for s in services:
        sm = s["metadata"]
        if (sm.get("namespace"), sm["name"]) == (meta.get("namespace"), meta["name"]):
            continue
        ip = (s.get("spec") or {}).get("clusterIP")
        if ip:
            used.add(ip)
    net = ipaddress.ip_network(cidr, strict=False)
    hosts = net.hosts()
    next(hosts, None)  # .1 belongs to the `kubernetes` Service
    for a in hosts:
        if str(a) not in used and str(a) != DNS_SERVICE_IP:
            return str(a)
    return ""  # range exhausted: leave it unset rather than fail the write
