"""Deployment → ReplicaSet → Pod expansion and pod scheduling, named as Kubernetes names them.

A Deployment owns one ReplicaSet per distinct pod template, named
``<deployment>-<pod-template-hash>``; the current one grows to ``spec.replicas`` and older ones
shrink to 0 (kept up to ``revisionHistoryLimit``) at the pace the Deployment's strategy allows
(:mod:`localcluster.apiserver.controllers.rollout`). A ReplicaSet creates pods with
``generateName: <rs>-``, so pods are ``<deployment>-<hash>-<5 chars>``. The scheduler honours
``spec.nodeName`` and otherwise binds a pod to the node with the fewest pods among those it may
use: not cordoned (``spec.unschedulable``) and without a ``NoSchedule``/``NoExecute`` taint the pod
does not tolerate — which leaves out nodes that are not Ready (nodelifecycle.py taints them).
"""

from __future__ import annotations

import logging
from typing import Any

from localcluster.apiserver.controllers.hashing import compute_hash
from localcluster.apiserver.controllers.rollout import RsState, plan
from localcluster.apiserver.controllers.taints import schedulable
from localcluster.apiserver.controllers.util import (
    as_map,
    condition_true,
    controlled_by,
    guarded,
    owner_ref,
    set_status,
    write,
)
from localcluster.apiserver.errors import ApiError
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["reconcile_deployments", "reconcile_replicasets", "schedule_pods"]

log = logging.getLogger("localcluster.apiserver.workloads")
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"


def _active(pod: dict[str, Any]) -> bool:
    return as_map(pod.get("status")).get("phase") not in ("Succeeded", "Failed")


def _replicas(spec: dict[str, Any]) -> int:
    try:
        return max(0, int(spec.get("replicas", 1)))
    except (TypeError, ValueError):
        return 1


def reconcile_deployments(store: Store) -> int:
    writes = 0
    for d in list(store.objects("Deployment")):
        writes += guarded(_reconcile_deployments_one, store, d)
    return writes


def _reconcile_deployments_one(store: Store, d: dict[str, Any]) -> int:
    writes = 0
    rs_kind = by_kind("ReplicaSet")
    meta, spec = d["metadata"], d.get("spec") or {}
    ns, name = meta["namespace"], meta["name"]
    template = spec.get("template") or {}
    want = _replicas(spec)
    h = compute_hash(template, (d.get("status") or {}).get("collisionCount"))
    owned = [rs for rs in store.objects("ReplicaSet", ns) if controlled_by(rs, d)]
    current = next((rs for rs in owned if rs["metadata"].get("labels", {}).get(HASH_LABEL) == h), None)
    revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, "0") or 0) for rs in owned]
    if current is None:
        tmpl = clone(template)
        tmpl.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = clone(
            spec.get("selector") or {"matchLabels": dict(template.get("metadata", {}).get("labels", {}))}
        )
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        rs = {
            "metadata": {
                "name": f"{name}-{h}",
                "namespace": ns,
                "labels": dict(tmpl["metadata"]["labels"]),
                "annotations": {REVISION: str(max(revisions, default=0) + 1)},
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": tmpl},
        }
        try:
            current = store.create(rs_kind, rs, validate=False)
            writes += 1
        except ApiError as e:
            log.warning("deployment %s/%s: cannot create ReplicaSet: %s", ns, name, e.message)
            return writes
    old = sorted(
        (rs for rs in owned if rs["metadata"]["uid"] != current["metadata"]["uid"]),
        key=lambda r: int(r["metadata"].get("annotations", {}).get(REVISION, "0") or 0),
    )
    old_pods = sum(1 for rs in old for p in store.objects("Pod", ns) if controlled_by(p, rs) and _active(p))
    new_target, old_targets = plan(
        want, as_map(spec.get("strategy")), _state(current), [_state(rs) for rs in old], old_pods
    )
    for rs, target in [(current, new_target), *zip(old, old_targets, strict=True)]:
        if _replicas(rs.get("spec") or {}) != target:
            new = clone(rs)
            new["spec"]["replicas"] = target
            writes += write(store, new)
    # revisionHistoryLimit: prune the oldest ReplicaSets that are fully scaled down.
    excess = len(old) - int(spec.get("revisionHistoryLimit", 10))
    for rs in old:
        cur = store.peek("ReplicaSet", ns, rs["metadata"]["name"])
        if excess <= 0 or cur is None:
            break
        if _replicas(as_map(cur.get("spec"))) == 0 and not as_map(cur.get("status")).get("replicas"):
            store.delete(rs_kind, ns, rs["metadata"]["name"])
            writes += 1
            excess -= 1
    owned = [rs for rs in store.objects("ReplicaSet", ns) if controlled_by(rs, d)]
    cur_status = (store.peek("ReplicaSet", ns, current["metadata"]["name"]) or current).get("status") or {}
    total = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in owned)
    ready = sum(int((rs.get("status") or {}).get("readyReplicas", 0)) for rs in owned)
    status = {
        "observedGeneration": meta.get("generation", 1),
        "replicas": total,
        "updatedReplicas": int(cur_status.get("replicas", 0)),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, want - ready),
        "conditions": [
            {
                "type": "Available",
                "status": "True" if ready >= want else "False",
                "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
            }
        ],
    }
    writes += set_status(store, d, status)
    return writes


def _state(rs: dict[str, Any]) -> RsState:
    status = as_map(rs.get("status"))
    return RsState(_replicas(as_map(rs.get("spec"))), int(status.get("availableReplicas", 0) or 0))


def reconcile_replicasets(store: Store) -> int:
    writes = 0
    for rs in list(store.objects("ReplicaSet")):
        writes += guarded(_reconcile_replicasets_one, store, rs)
    return writes


def _reconcile_replicasets_one(store: Store, rs: dict[str, Any]) -> int:
    writes = 0
    pod_kind = by_kind("Pod")
    meta, spec = rs["metadata"], rs.get("spec") or {}
    ns = meta["namespace"]
    want = _replicas(spec)
    pods = [p for p in store.objects("Pod", ns) if controlled_by(p, rs) and _active(p)]
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    for _ in range(want - len(pods)):
        pod = {
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": ns,
                "labels": dict(tmeta.get("labels") or {}),
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [owner_ref(rs)],
            },
            "spec": clone(template.get("spec") or {}),
        }
        store.create(pod_kind, pod, validate=False)
        writes += 1
    if len(pods) > want:
        # Delete unscheduled first, then not-ready, then the newest (Kubernetes' ActivePods order).
        pods.sort(
            key=lambda p: (
                bool(as_map(p.get("spec")).get("nodeName")),
                condition_true(p, "Ready"),
                p["metadata"]["creationTimestamp"],
            ),
            reverse=False,
        )
        victims = pods[: len(pods) - want]
        for p in victims:
            store.delete(pod_kind, ns, p["metadata"]["name"])
            writes += 1
    pods = [p for p in store.objects("Pod", ns) if controlled_by(p, rs) and _active(p)]
    ready = sum(1 for p in pods if condition_true(p, "Ready"))
    status = {
        "replicas": len(pods),
        "fullyLabeledReplicas": len(pods),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": meta.get("generation", 1),
    }
    writes += set_status(store, rs, status)
    return writes


def schedule_pods(store: Store) -> int:
    writes = 0
    nodes = {
        n["metadata"]["name"]: n for n in sorted(store.objects("Node"), key=lambda n: n["metadata"]["name"])
    }
    load = dict.fromkeys(nodes, 0)
    pods = list(store.objects("Pod"))
    for p in pods:
        node = as_map(p.get("spec")).get("nodeName")
        if node in load and _active(p):
            load[node] += 1
    for p in sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"])):
        writes += guarded(_schedule_one, store, p, nodes, load)
    return writes


def _schedule_one(
    store: Store, p: dict[str, Any], nodes: dict[str, dict[str, Any]], load: dict[str, int]
) -> int:
    writes = 0
    if not isinstance(p.get("spec"), dict):
        return 0  # malformed: nothing to bind
    if not p["spec"].get("nodeName"):
        fit = [n for n, node in nodes.items() if schedulable(node, p)]
        if not fit:  # stays Pending, saying why, until a node it fits turns Ready
            cond = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/{len(nodes)} nodes are available: "
                + (
                    "no nodes"
                    if not nodes
                    else "every node is cordoned or has a taint the pod does not tolerate"
                ),
            }
            return set_status(store, p, {"phase": "Pending", "conditions": [cond]})
        node = min(fit, key=lambda n: (load[n], n))
        load[node] += 1
        new = clone(p)
        new["spec"]["nodeName"] = node
        writes += write(store, new)
        p = store.peek("Pod", p["metadata"]["namespace"], p["metadata"]["name"]) or new
    status = as_map(p.get("status"))
    unschedulable = any(
        as_map(c).get("type") == "PodScheduled" and as_map(c).get("reason") == "Unschedulable"
        for c in status.get("conditions") or []
    )
    if not status.get("phase") or (status.get("phase") == "Pending" and unschedulable):
        # Merge PodScheduled by type, as the scheduler's status patch does; keep other conditions.
        conditions = [c for c in status.get("conditions") or [] if as_map(c).get("type") != "PodScheduled"]
        conditions.insert(0, {"type": "PodScheduled", "status": "True"})
        writes += set_status(store, p, {"phase": "Pending", "conditions": conditions})
    return writes
