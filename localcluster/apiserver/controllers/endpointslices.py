"""EndpointSlices derived from Services with a selector and their Pods (the EndpointSlice controller).

Endpoints are pods in the Service's namespace that match its selector, are not terminal and have a
``status.podIP``. ``ready``/``serving`` follow the pod's Ready condition (set by the datapath through
the status subresource), and are false while the pod's Node is not Ready (its node agent stopped
posting heartbeats, nodelifecycle.py: nothing vouches for the pod); a pod whose ``spec.subdomain``
is the Service's name carries its ``spec.hostname`` (its DNS name under a headless Service). Named
targetPorts are resolved per pod from its container ports; pods that resolve to the same ports
share slices of at most 100 endpoints, as Kubernetes groups them. Slices carry
``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by`` and are owned by the
Service. A Service with no endpoints keeps one empty placeholder slice.
"""

from __future__ import annotations

from typing import Any

from localcluster.apiserver.controllers.util import condition_true, guarded, owner_ref
from localcluster.apiserver.selectors import match_labels_selector
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["MANAGED_BY", "SERVICE_NAME", "desired_slices", "reconcile_endpointslices"]

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS = 100  # kube-controller-manager's --max-endpoints-per-slice default

PortKey = tuple[tuple[str, int, str, str], ...]  # (name, port, protocol, appProtocol)


def _resolve(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and (cp.get("protocol") or "TCP") == (port.get("protocol") or "TCP"):
                return int(cp["containerPort"])
    return None


def desired_slices(
    svc: dict[str, Any], pods: list[dict[str, Any]], not_ready_nodes: frozenset[str] = frozenset()
) -> dict[tuple[str, PortKey], list[dict[str, Any]]]:
    """(addressType, ports) → endpoints, for the pods that belong to ``svc``."""
    spec = svc.get("spec") or {}
    groups: dict[tuple[str, PortKey], list[dict[str, Any]]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports: list[tuple[str, int, str, str]] = []
        for sp in spec.get("ports") or []:
            resolved = _resolve(sp, pod)
            if resolved is not None:
                ports.append(
                    (sp.get("name") or "", resolved, sp.get("protocol") or "TCP", sp.get("appProtocol") or "")
                )
        # A pod on a node nobody vouches for (no heartbeats) gets no traffic until evicted or back.
        on_ready_node = (pod.get("spec") or {}).get("nodeName") not in not_ready_nodes
        ready = condition_true(pod, "Ready") and on_ready_node
        ep: dict[str, Any] = {
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": False},
            "targetRef": {
                "kind": "Pod",
                "namespace": pod["metadata"]["namespace"],
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        }
        pod_spec = pod.get("spec") or {}
        node = pod_spec.get("nodeName")
        if node:
            ep["nodeName"] = node
        # A pod named into the Service's DNS subdomain (StatefulSet style): <hostname>.<svc>.<ns>.svc
        if pod_spec.get("hostname") and pod_spec.get("subdomain") == svc["metadata"]["name"]:
            ep["hostname"] = pod_spec["hostname"]
        family = "IPv6" if ":" in ip else "IPv4"
        groups.setdefault((family, tuple(ports)), []).append(ep)
    return groups


def _ports_json(key: PortKey) -> list[dict[str, Any]]:
    out = []
    for name, port, proto, app in key:
        p: dict[str, Any] = {"name": name, "port": port, "protocol": proto}
        if app:
            p["appProtocol"] = app
        out.append(p)
    return out


def _key_of(es: dict[str, Any]) -> tuple[str, PortKey]:
    ports = tuple(
        (p.get("name") or "", int(p.get("port", 0)), p.get("protocol") or "TCP", p.get("appProtocol") or "")
        for p in es.get("ports") or []
    )
    return es.get("addressType", "IPv4"), ports


def reconcile_endpointslices(store: Store) -> int:
    writes = 0
    not_ready = frozenset(
        n["metadata"]["name"] for n in store.objects("Node") if not condition_true(n, "Ready")
    )
    for svc in list(store.objects("Service")):
        writes += guarded(_reconcile_endpointslices_one, store, svc, not_ready)
    return writes


def _reconcile_endpointslices_one(store: Store, svc: dict[str, Any], not_ready: frozenset[str]) -> int:
    writes = 0
    kind = by_kind("EndpointSlice")
    meta, spec = svc["metadata"], svc.get("spec") or {}
    ns = meta["namespace"]
    existing = [
        es
        for es in store.objects("EndpointSlice", ns)
        if (es["metadata"].get("labels") or {}).get(SERVICE_NAME) == meta["name"]
        and (es["metadata"].get("labels") or {}).get(MANAGED_BY) == CONTROLLER
    ]
    selector = spec.get("selector")
    if not selector:
        return writes  # selector-less Services have user-managed endpoints
    pods = [
        p
        for p in store.objects("Pod", ns)
        if match_labels_selector({"matchLabels": selector}, p["metadata"].get("labels") or {})
    ]
    want = desired_slices(svc, pods, not_ready) or {("IPv4", ()): []}
    labels = {**(meta.get("labels") or {}), SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER}
    by_key: dict[tuple[str, PortKey], list[dict[str, Any]]] = {}
    for es in sorted(existing, key=lambda e: e["metadata"]["name"]):
        by_key.setdefault(_key_of(es), []).append(es)
    for key, endpoints in want.items():
        # At most MAX_ENDPOINTS per slice (the controller's maxEndpointsPerSlice).
        chunks = [endpoints[i : i + MAX_ENDPOINTS] for i in range(0, len(endpoints), MAX_ENDPOINTS)] or [[]]
        have = by_key.pop(key, [])
        for i, chunk in enumerate(chunks):
            body = {"addressType": key[0], "ports": _ports_json(key[1]), "endpoints": chunk}
            cur = have[i] if i < len(have) else None
            if cur is None:
                obj = {
                    "metadata": {
                        "generateName": f"{meta['name']}-",
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [owner_ref(svc)],
                    },
                    **body,
                }
                store.create(kind, obj, validate=False)
                writes += 1
            elif any(cur.get(k) != v for k, v in body.items()) or cur["metadata"].get("labels") != labels:
                new = clone(cur)
                new.update(body)
                new["metadata"]["labels"] = labels
                before = store.rv
                store.update(kind, new, validate=False)
                writes += int(store.rv != before)
        by_key.setdefault(key, []).extend(have[len(chunks) :])  # surplus slices of this key
    for slices in by_key.values():
        for es in slices:
            store.delete(kind, ns, es["metadata"]["name"])
            writes += 1
    return writes
