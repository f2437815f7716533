"""IPAM persistence and bad state; container env with downward-API fieldRefs (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.datapath.nodeids import NodeIds
from services.datapath.pods.ipam import Ipam, IpamExhausted
from services.datapath.pods.runner import container_env


def test_ipam_is_stable_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    ipam = Ipam(path, "10.244.3.0/24")
    a, b = ipam.allocate("default/a"), ipam.allocate("default/b")
    assert a.ip == "10.244.3.2" and b.ip == "10.244.3.3" and a.ep_id != b.ep_id
    assert ipam.allocate("default/a").ip == a.ip
    again = Ipam(path, "10.244.3.0/24")  # a restarted agent
    assert again.get("default/a") is not None and again.get("default/a").ip == a.ip  # type: ignore[union-attr]
    again.release("default/a")
    assert Ipam(path, "10.244.3.0/24").get("default/a") is None
    assert Ipam(path, "10.244.9.0/24").get("default/b") is None  # another CIDR: a fresh table


def test_ipam_exhaustion_and_corrupt_state(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", "10.244.4.0/30")  # .1 reserved, .2 usable, .3 broadcast
    ipam.allocate("default/a")
    with pytest.raises(IpamExhausted):
        ipam.allocate("default/b")
    (tmp_path / "ipam.json").write_text("{not json")
    fresh = Ipam(tmp_path / "ipam.json", "10.244.4.0/30")
    assert fresh.allocs == {} and (tmp_path / "ipam.corrupt").exists()


def test_node_ids_persist(tmp_path: Path) -> None:
    ids = NodeIds(tmp_path / "nodeids.json", "node-1")
    assert ids.id_of("node-1") == 0 and ids.id_of("") == 0
    n2 = ids.id_of("node-2")
    assert n2 > 0 and ids.id_of("node-3") != n2
    assert NodeIds(tmp_path / "nodeids.json", "node-1").id_of("node-2") == n2
    assert ids.name_of(n2) == "node-2" and ids.name_of(0) == "node-1"


def test_container_env_resolves_field_refs() -> None:
    pod = {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"}, "spec": {}}
    container = {
        "env": [
            {"name": "A", "value": "x"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "NOPE", "valueFrom": {"fieldRef": {"fieldPath": "status.unknown"}}},
            {"value": "no name"},
            "garbage",
        ]
    }
    env = container_env(pod, container, "10.244.1.9", "node-1")
    assert env == {"A": "x", "POD": "web-1", "NS": "shop", "IP": "10.244.1.9", "NODE": "node-1"}


def test_workload_env_never_carries_agent_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.datapath.pods.runner import workload_base_env

    monkeypatch.setenv("NODEMESH_NATS_PASSWORD", "secret")
    monkeypatch.setenv("NODEMESH_CLUSTER_DATA_DIR", "/d")
    env = workload_base_env()
    assert "NODEMESH_NATS_PASSWORD" not in env and env["NODEMESH_CLUSTER_DATA_DIR"] == "/d"
