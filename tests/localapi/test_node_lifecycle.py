"""Node lifecycle in the local API server: heartbeats, NotReady, taints, scheduling, eviction, and
reconciling the node count — driven through the controllers with a clock the test advances, so
"40 s without a heartbeat" takes no wall time.

Heartbeats are the exact status patches the datapath posts (services/datapath/heartbeat.py), written
through the status subresource as the watcher applies them.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from localcluster.apiserver.controllers import ControllerManager
from localcluster.apiserver.controllers.bootstrap import bootstrap
from localcluster.apiserver.controllers.taints import eviction_due, schedulable, tolerates
from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind
from services.datapath.heartbeat import heartbeat_patch

GRACE = 40.0
TOLERATION = 30


class Clock:
    def __init__(self) -> None:
        self.t = 1_900_000_000.0

    def __call__(self) -> float:
        return self.t


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    def __init__(self, tmp: Path, nodes: int = 2, toleration: int | None = TOLERATION) -> None:
        self.clock = Clock()
        self.store = Store(tmp / "api")
        self.store.default_toleration_seconds = toleration
        bootstrap(self.store, nodes, heartbeats=True)
        self.cm = ControllerManager(self.store, node_grace=GRACE, clock=self.clock)

    def settle(self) -> None:
        for _ in range(20):
            if self.cm.run_once() == 0:
                return
        raise AssertionError("controllers did not settle")

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    def beat(self, node: str) -> None:
        """What the watcher does with the datapath's heartbeat patch: a status merge patch."""
        cur = self.store.peek("Node", "", node)
        assert cur is not None
        patch = heartbeat_patch(node, cur, rfc3339(self.clock.t))
        new = clone(cur)
        new["status"] = {**(cur.get("status") or {}), **patch.status}
        self.store.update(by_kind("Node"), new, status_only=True, validate=False)

    def node(self, name: str) -> dict[str, Any]:
        n = self.store.peek("Node", "", name)
        assert n is not None
        return n

    def ready(self, name: str) -> tuple[str, str]:
        c = next(c for c in self.node(name)["status"]["conditions"] if c["type"] == "Ready")
        return c["status"], c.get("reason", "")

    def taints(self, name: str) -> set[tuple[str, str]]:
        return {(t["key"], t["effect"]) for t in self.node(name).get("spec", {}).get("taints") or []}

    def pods(self) -> dict[str, str]:
        """pod name → its node ("" while unscheduled)."""
        return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in self.store.objects("Pod")}

    def run_pods(self) -> None:
        """What a node's datapath reports for the pods it runs: an IP and Ready."""
        for p in list(self.store.objects("Pod")):
            node = p["spec"].get("nodeName")
            if node and not (p.get("status") or {}).get("podIP"):
                n = int(node.rsplit("-", 1)[1])
                ip = f"10.244.{n}.{10 + len(list(self.store.objects('Pod')))}"
                new = clone(p)
                new["status"] = {
                    **(p.get("status") or {}),
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                self.store.update(by_kind("Pod"), new, status_only=True, validate=False)

    def endpoints(self) -> dict[str, bool]:
        """node of each endpoint of Service web → ready."""
        out = {}
        for es in self.store.objects("EndpointSlice", "default"):
            for ep in es.get("endpoints") or []:
                out[ep["targetRef"]["name"]] = ep["conditions"]["ready"]
        return out


UNREACHABLE = {
    ("node.kubernetes.io/unreachable", "NoSchedule"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
}


def deploy(c: Cluster, replicas: int) -> None:
    c.store.create(
        by_kind("Deployment"),
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                },
            },
        },
        validate=False,
    )
    c.store.create(
        by_kind("Service"),
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        validate=False,
    )


def test_nodes_are_not_ready_until_their_agent_posts_a_heartbeat(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    deploy(c, 2)
    c.settle()
    assert c.ready("node-1") == ("Unknown", "NodeStatusNeverUpdated")
    assert c.taints("node-1") == UNREACHABLE
    pods = c.pods()
    assert len(pods) == 2 and set(pods.values()) == {""}, pods  # nowhere to go
    pod = next(iter(c.store.objects("Pod")))
    sched = next(x for x in pod["status"]["conditions"] if x["type"] == "PodScheduled")
    assert (sched["status"], sched["reason"]) == ("False", "Unschedulable")

    c.beat("node-1")
    c.settle()
    assert c.ready("node-1") == ("True", "KubeletReady") and not c.taints("node-1")
    assert set(c.pods().values()) == {"node-1"}  # node-2 still has not vouched for itself
    pod = next(iter(c.store.objects("Pod")))
    assert {"type": "PodScheduled", "status": "True"} in pod["status"]["conditions"]


def test_a_node_that_stops_posting_heartbeats_turns_not_ready_and_its_pods_move(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.beat("node-1")
    c.beat("node-2")
    deploy(c, 2)
    c.settle()
    assert sorted(c.pods().values()) == ["node-1", "node-2"]
    c.run_pods()
    c.settle()
    on_2 = next(name for name, node in c.pods().items() if node == "node-2")
    assert set(c.endpoints().values()) == {True} and len(c.endpoints()) == 2

    # node-2's agents are gone; node-1 goes on beating. Within the grace period nothing changes.
    for _ in range(4):
        c.advance(GRACE / 4)
        c.beat("node-1")
        c.settle()
    assert c.ready("node-2")[0] == "True"
    c.advance(1)
    c.beat("node-1")
    c.settle()
    assert c.ready("node-2") == ("Unknown", "NodeStatusUnknown")
    assert c.ready("node-1")[0] == "True"
    assert c.taints("node-2") == UNREACHABLE
    # Its pod stays (tolerated for 30 s) but no longer receives traffic.
    assert c.pods()[on_2] == "node-2"
    assert c.endpoints()[on_2] is False

    c.advance(TOLERATION - 1)
    c.beat("node-1")
    c.settle()
    assert on_2 in c.pods()
    c.advance(2)
    c.beat("node-1")
    c.settle()
    pods = c.pods()
    assert on_2 not in pods  # evicted; the ReplicaSet made a new one, placed on the Ready node
    assert sorted(pods.values()) == ["node-1", "node-1"], pods
    c.run_pods()
    c.settle()
    assert on_2 not in c.endpoints() and set(c.endpoints().values()) == {True}
    assert len(c.endpoints()) == 2

    # node-2 comes back: Ready again, untainted, schedulable.
    c.beat("node-2")
    c.settle()
    assert c.ready("node-2")[0] == "True" and not c.taints("node-2")


def test_a_pod_that_tolerates_unreachable_forever_stays(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=1)
    c.beat("node-1")
    c.settle()
    for name, tols in (
        ("forever", [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
        ("defaults", None),
    ):
        spec: dict[str, Any] = {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]}
        if tols is not None:
            spec["tolerations"] = tols
        c.store.create(by_kind("Pod"), {"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    c.advance(GRACE + 1)
    c.settle()
    c.advance(TOLERATION + 1)
    c.settle()
    assert set(c.pods()) == {"forever"}


def test_pods_without_tolerations_are_evicted_as_soon_as_the_node_is_unreachable(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=1, toleration=None)  # no default tolerations
    c.beat("node-1")
    c.settle()
    c.store.create(
        by_kind("Pod"),
        {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    c.settle()
    assert "p" in c.pods()
    c.advance(GRACE + 1)
    c.settle()
    assert c.pods() == {}


def test_up_with_fewer_nodes_removes_the_extra_nodes_and_their_pods(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.beat("node-1")
    c.beat("node-2")
    deploy(c, 2)
    c.settle()
    assert sorted(c.pods().values()) == ["node-1", "node-2"]
    # A user's own Node is not ours to remove.
    c.store.create(by_kind("Node"), {"metadata": {"name": "node-7"}})
    bootstrap(c.store, 1, heartbeats=True)  # what the API server does at `nodemesh up --nodes 1`
    assert {n["metadata"]["name"] for n in c.store.objects("Node")} == {"node-1", "node-7"}
    c.settle()
    assert sorted(c.pods().values()) == ["node-1", "node-1"]


def test_pods_bound_to_a_deleted_node_are_deleted(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.beat("node-1")
    c.beat("node-2")
    deploy(c, 2)
    c.settle()
    c.store.delete(by_kind("Node"), "", "node-2")
    c.settle()
    assert sorted(c.pods().values()) == ["node-1", "node-2"]  # quarantined: the Node may come back
    c.advance(GRACE + 1)
    c.beat("node-1")
    c.settle()
    assert sorted(c.pods().values()) == ["node-1", "node-1"]


def test_a_heartbeat_is_no_transition() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "T0"}]}}
    assert heartbeat_patch("node-1", ready, "T9").status["conditions"][0]["lastTransitionTime"] == "T0"
    unknown = {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "T0"}]}}
    cond = heartbeat_patch("node-1", unknown, "T9").status["conditions"][0]
    assert (cond["status"], cond["lastTransitionTime"], cond["lastHeartbeatTime"]) == ("True", "T9", "T9")


@pytest.mark.parametrize(
    ("toleration", "matches"),
    [
        ({"key": "k", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),
        ({"key": "k", "value": "v", "effect": "NoExecute"}, True),
        ({"key": "k", "value": "other"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, False),
        ({"key": "k", "operator": "Bogus"}, False),
        ("not a toleration", False),
    ],
)
def test_toleration_matching(toleration: Any, matches: bool) -> None:
    assert tolerates(toleration, {"key": "k", "value": "v", "effect": "NoExecute"}) is matches


def test_cordon_and_malformed_tolerations() -> None:
    node: dict[str, Any] = {"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}
    assert not schedulable(node, {"spec": {"tolerations": "garbage"}})
    assert schedulable(node, {"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}})
    assert not schedulable({"spec": {"unschedulable": True}}, {"spec": {}})
    tainted = {"spec": {"taints": [{"key": "k", "effect": "NoExecute", "timeAdded": "bad"}]}}
    pod = {"spec": {"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": "x"}]}}
    assert eviction_due(pod, tainted) == 0.0  # malformed entries protect nothing
