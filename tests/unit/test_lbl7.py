"""The lb-l7 rule both the datapath and xds follow (nodemesh/lbl7.py): annotations, listener ports."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh import lbl7
from nodemesh.lbl7 import Claim, PortKey


def svc(name: str, ns: str = "default", created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.96.0.10")
    spec.setdefault("ports", [{"name": "http", "port": 80, "protocol": "TCP"}])
    meta = {"name": name, "namespace": ns, "creationTimestamp": created,
            "annotations": {"service.cilium.io/lb-l7": "enabled"}}  # fmt: skip
    return {"kind": "Service", "metadata": meta, "spec": spec}


def test_enabled_only_for_enabled() -> None:
    assert lbl7.enabled({"service.cilium.io/lb-l7": "enabled"})
    assert lbl7.enabled({"service.cilium.io/lb-l7": " Enabled "})
    assert not lbl7.enabled({"service.cilium.io/lb-l7": "disabled"})
    assert not lbl7.enabled({})
    assert not lbl7.enabled(None)


@pytest.mark.parametrize("algo", ["round_robin", "least_request", "random"])
def test_each_algorithm_is_accepted(algo: str) -> None:
    assert lbl7.algorithm({"service.cilium.io/lb-l7-algorithm": algo}) == (algo, "")


def test_absent_algorithm_is_round_robin_and_an_invalid_one_is_reported() -> None:
    assert lbl7.algorithm({}) == ("round_robin", "")
    algo, err = lbl7.algorithm({"service.cilium.io/lb-l7-algorithm": "fastest"})
    assert algo == "round_robin"
    assert "'fastest'" in err and "round_robin, least_request, random" in err


def test_claims_tcp_ports_of_annotated_services_with_a_cluster_ip() -> None:
    s = svc("web", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "admin", "port": 9000},
        {"name": "bad", "port": "x"},
    ])  # fmt: skip
    assert [c.key for c in lbl7.claims(s)] == [PortKey("default", "web", 80), PortKey("default", "web", 9000)]
    plain = svc("plain")
    plain["metadata"]["annotations"] = {}
    assert lbl7.claims(plain) == []
    assert lbl7.claims(svc("h", clusterIP="None")) == []
    assert lbl7.claims(svc("e", type="ExternalName", clusterIP="")) == []
    assert lbl7.claims(svc("pending", clusterIP="")) == []


def test_ports_are_deterministic_and_in_the_range() -> None:
    claims = [c for i in range(50) for c in lbl7.claims(svc(f"s{i}"))]
    a, b = lbl7.assign(claims), lbl7.assign(reversed(claims))
    assert a.ports == b.ports and len(a.ports) == 50
    assert all(lbl7.PORT_BASE <= p < lbl7.PORT_BASE + lbl7.PORT_COUNT for p in a.ports.values())
    assert len(set(a.ports.values())) == 50  # unique per node
    assert not a.errors


def _colliding() -> tuple[PortKey, PortKey]:
    """Two Service ports whose preferred listener port is the same."""
    seen: dict[int, PortKey] = {}
    for i in range(100000):
        k = PortKey("default", f"s{i}", 80)
        p = lbl7.preferred_port(k)
        if p in seen:
            return seen[p], k
        seen[p] = k
    raise AssertionError("no collision found")


def test_a_collision_gives_the_younger_service_the_next_port_and_is_reported() -> None:
    old, young = _colliding()
    want = lbl7.preferred_port(old)
    claims = [Claim("2026-01-01T00:00:01Z", young), Claim("2026-01-01T00:00:00Z", old)]
    a = lbl7.assign(claims)
    assert a.ports[old] == want
    assert a.ports[young] == want + 1 if want + 1 < lbl7.PORT_BASE + lbl7.PORT_COUNT else lbl7.PORT_BASE
    assert len(a.notes) == 1 and str(young) in a.notes[0] and str(old) in a.notes[0]
    # the older Service keeps its port whether or not the younger one is known yet
    assert lbl7.assign(claims[1:]).ports[old] == want
    # the younger one alone takes its preferred port
    assert lbl7.assign(claims[:1]).ports[young] == want


def test_listener_is_the_router_ip() -> None:
    assert lbl7.router_ip("10.244.2.0/24") == "10.244.2.1"
    assert lbl7.router_ip("nonsense") == ""
    assert lbl7.listener("10.244.2.0/24", 21000) == ("10.244.2.1", 21000)
    assert lbl7.listener("", 21000) is None
    assert lbl7.listener("10.244.2.0/24", 80) is None  # not a port the rule hands out
