"""Taints and tolerations with Kubernetes' matching rules (k8s.io/api/core/v1 ToleratesTaint).

A toleration matches a taint when its ``effect`` is empty or equal, its ``key`` is empty (with
``operator: Exists``: every taint) or equal, and with ``operator: Equal`` (the default) its
``value`` equals the taint's. Malformed entries match nothing, so they neither block scheduling
through a taint nor protect a pod from eviction.
"""

from __future__ import annotations

import datetime
from typing import Any

from localcluster.apiserver.controllers.util import as_map

__all__ = [
    "NOT_READY",
    "UNREACHABLE",
    "eviction_due",
    "node_taints",
    "schedulable",
    "tolerates",
]

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"


def tolerates(toleration: Any, taint: dict[str, Any]) -> bool:
    if not isinstance(toleration, dict):
        return False
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    op = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if op == "Exists":
        return not key or key == taint.get("key")
    if op != "Equal":
        return False
    return key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def node_taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in as_map(node.get("spec")).get("taints") or [] if isinstance(t, dict)]


def _tolerations(pod: dict[str, Any]) -> list[Any]:
    tols = as_map(pod.get("spec")).get("tolerations")
    return tols if isinstance(tols, list) else []


def schedulable(node: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether the scheduler may bind ``pod`` to ``node`` (cordon, NoSchedule/NoExecute taints)."""
    if as_map(node.get("spec")).get("unschedulable") is True:
        return False
    tols = _tolerations(pod)
    return all(
        any(tolerates(tol, t) for tol in tols)
        for t in node_taints(node)
        if t.get("effect") in ("NoSchedule", "NoExecute")
    )


def _time(ts: Any) -> float:
    try:
        return (
            datetime.datetime.strptime(str(ts), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
        )
    except ValueError:
        return 0.0  # no (or a malformed) timeAdded: the taint counts as old


def eviction_due(pod: dict[str, Any], node: dict[str, Any]) -> float | None:
    """When the node's NoExecute taints evict ``pod`` (a Unix time; 0.0: now), None if never.

    A taint no toleration matches evicts at once; one matched only by tolerations with
    ``tolerationSeconds`` evicts when the shortest of them has run out since ``timeAdded``.
    """
    tols = _tolerations(pod)
    due: float | None = None
    for t in node_taints(node):
        if t.get("effect") != "NoExecute":
            continue
        matching = [tol for tol in tols if tolerates(tol, t)]
        if not matching:
            return 0.0
        limits = []
        for tol in matching:
            secs = tol.get("tolerationSeconds")
            if secs is None:
                break  # tolerated forever
            try:
                limits.append(max(0.0, float(secs)))
            except (TypeError, ValueError):
                limits.append(0.0)
        else:
            at = _time(t.get("timeAdded")) + min(limits)
            due = at if due is None else min(due, at)
    return due
