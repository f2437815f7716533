"""Node lifecycle: kube-controller-manager's node lifecycle controller, taint-based eviction and
the pod GC's orphaned pods, for the local cluster's nodes.

- **Heartbeats.** A node's datapath (its kubelet in local mode) posts the Node's ``Ready`` condition
  with a fresh ``lastHeartbeatTime`` every few seconds (services/datapath/heartbeat.py). The
  controller remembers when it *observed* each new heartbeat on its own clock, as the upstream
  controller does with its probe timestamps, so the two clocks are never compared. A node with no
  new heartbeat for ``grace`` seconds (``--node-monitor-grace-period``, 40 s) gets ``Ready=Unknown``
  (reason ``NodeStatusUnknown``, or ``NodeStatusNeverUpdated`` if it never posted one).
- **Taints.** ``Ready=Unknown`` → ``node.kubernetes.io/unreachable``, ``Ready=False`` →
  ``node.kubernetes.io/not-ready``, each with effects ``NoSchedule`` (the scheduler skips the node)
  and ``NoExecute``; both go once the node is Ready again. Other taints are left alone.
- **Eviction.** A pod bound to a node with a ``NoExecute`` taint it does not tolerate is deleted at
  once; one that tolerates it for ``tolerationSeconds`` is deleted that long after the taint's
  ``timeAdded``. Every pod gets 300 s tolerations for both taints by default
  (admission.py, kube-apiserver's DefaultTolerationSeconds). Its ReplicaSet then makes a new pod,
  which the scheduler places on a Ready node, and the EndpointSlice controller drops the old one.
- **Orphaned pods.** Pods bound to a Node that has not existed for ``grace`` seconds are deleted
  (the pod GC's quarantine: a Node being re-created keeps its pods).

A pod on a node that is not Ready is listed as not ready in EndpointSlices
(endpointslices.py) until it is evicted or its node comes back, which is what the upstream
controller achieves by writing ``Ready=False`` into the pods' status.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from localcluster.apiserver.controllers.taints import (
    NOT_READY,
    UNREACHABLE,
    eviction_due,
)
from localcluster.apiserver.controllers.util import as_map, set_status, write
from localcluster.apiserver.errors import ApiError
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["NodeLifecycle", "node_ready"]

log = logging.getLogger("localcluster.apiserver.nodelifecycle")


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def _ready_condition(node: dict[str, Any]) -> dict[str, Any] | None:
    for c in as_map(node.get("status")).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c
    return None


def node_ready(node: dict[str, Any]) -> str:
    """The node's Ready status: "True", "False" or "Unknown" (no condition reads as Unknown)."""
    c = _ready_condition(node)
    status = str(c.get("status")) if c is not None else "Unknown"
    return status if status in ("True", "False") else "Unknown"


class NodeLifecycle:
    """One instance per API server: it keeps the observed heartbeat times in memory."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.time) -> None:
        self.grace = grace
        self.clock = clock
        self._seen: dict[str, tuple[Any, float]] = {}  # node → (lastHeartbeatTime, observed at)
        self._missing: dict[str, float] = {}  # node named by pods but absent → since when

    @property
    def period(self) -> float:
        """How often a pass runs without any change (kube's --node-monitor-period is 5 s)."""
        return min(5.0, max(0.2, self.grace / 8))

    def reconcile(self, store: Store) -> int:
        now = self.clock()
        writes = 0
        nodes = {n["metadata"]["name"]: n for n in store.objects("Node")}
        for name in list(self._seen):
            if name not in nodes:
                del self._seen[name]
        for name, node in nodes.items():
            try:
                writes += self._node(store, node, now)
            except ApiError as e:
                log.warning("node %s: %s", name, e.message)
        nodes = {n["metadata"]["name"]: n for n in store.objects("Node")}
        named = {str(as_map(p.get("spec")).get("nodeName") or "") for p in store.objects("Pod")}
        self._missing = {n: self._missing.get(n, now) for n in named - set(nodes) - {""}}
        for pod in list(store.objects("Pod")):
            try:
                writes += self._pod(store, pod, nodes, now)
            except ApiError as e:
                log.warning("pod %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], e.message)
        return writes

    def next_eviction(self, store: Store) -> float | None:
        """Seconds until the earliest pending toleration runs out (None: nothing pending)."""
        now = self.clock()
        nodes = {n["metadata"]["name"]: n for n in store.objects("Node")}
        due = [
            d
            for p in store.objects("Pod")
            if (node := nodes.get(str(as_map(p.get("spec")).get("nodeName") or ""))) is not None
            and (d := eviction_due(p, node)) is not None
        ]
        return max(0.0, min(due) - now) if due else None

    def _node(self, store: Store, node: dict[str, Any], now: float) -> int:
        name = node["metadata"]["name"]
        cond = _ready_condition(node)
        beat = (cond or {}).get("lastHeartbeatTime")
        seen = self._seen.get(name)
        if seen is None or seen[0] != beat:
            # A new heartbeat (or the first look after our start: the node gets a full grace period).
            seen = self._seen[name] = (beat, now)
        writes = 0
        if node_ready(node) != "Unknown" or cond is None:
            if now - seen[1] > self.grace:
                never = cond is None or _parse(beat) is None
                new_cond = {
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated" if never else "NodeStatusUnknown",
                    "message": "Kubelet never posted node status."
                    if never
                    else "Kubelet stopped posting node status.",
                    "lastTransitionTime": _rfc3339(now),
                }
                if beat is not None:
                    new_cond["lastHeartbeatTime"] = beat
                others = [
                    c
                    for c in as_map(node.get("status")).get("conditions") or []
                    if as_map(c).get("type") != "Ready"
                ]
                log.warning("node %s: no heartbeat for %.0fs, Ready=Unknown", name, now - seen[1])
                writes += set_status(store, node, {"conditions": [new_cond, *others]})
                node = store.peek("Node", "", name) or node
                # Our own write keeps the heartbeat field: the next pass must not count it as new.
                self._seen[name] = ((_ready_condition(node) or {}).get("lastHeartbeatTime"), seen[1])
        writes += self._taints(store, node, now)
        return writes

    def _taints(self, store: Store, node: dict[str, Any], now: float) -> int:
        ready = node_ready(node)
        want_key = {"True": "", "False": NOT_READY, "Unknown": UNREACHABLE}[ready]
        spec = as_map(node.get("spec"))
        cur = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        keep = [t for t in cur if t.get("key") not in (NOT_READY, UNREACHABLE)]
        ours = [t for t in cur if t.get("key") == want_key] if want_key else []
        if want_key:
            have = {t.get("effect") for t in ours}
            for effect in ("NoSchedule", "NoExecute"):
                if effect not in have:
                    t = {"key": want_key, "effect": effect}
                    if effect == "NoExecute":
                        t["timeAdded"] = _rfc3339(now)  # the eviction clock starts here
                    ours.append(t)
        taints = keep + ours
        if taints == cur:
            return 0
        new = clone(node)
        if taints:
            new.setdefault("spec", {})["taints"] = taints
        else:
            new.setdefault("spec", {}).pop("taints", None)
        log.info("node %s: Ready=%s, taints %s", node["metadata"]["name"], ready, [t["key"] for t in taints])
        return write(store, new)

    def _pod(self, store: Store, pod: dict[str, Any], nodes: dict[str, dict[str, Any]], now: float) -> int:
        meta = pod["metadata"]
        node_name = as_map(pod.get("spec")).get("nodeName")
        if not node_name:
            return 0
        node = nodes.get(str(node_name))
        if node is None:
            if now - self._missing.get(str(node_name), now) <= self.grace:
                return 0
            log.info("deleting pod %s/%s: its node %s is gone", meta["namespace"], meta["name"], node_name)
        else:
            due = eviction_due(pod, node)
            if due is None or due > now:
                return 0
            log.info(
                "evicting pod %s/%s from node %s (NoExecute taint)",
                meta["namespace"],
                meta["name"],
                node_name,
            )
        store.delete(by_kind("Pod"), meta["namespace"], meta["name"], uid=meta["uid"])
        return 1
