"""ObservedGeneration everywhere: every condition the translator writes — GatewayClass, Gateway and each
listener, every route kind's parents, BackendTLSPolicy ancestors — carries the generation of the object
it is about, after any change of that generation (a patch bumps it: the API server's job), including the
Programmed merge after an Envoy ACK."""

from __future__ import annotations

import random
from typing import Any

import pytest

from conformance import objects as o
from conformance.certs import self_signed
from services.xds.translate import TranslateInput, translate, with_programmed

NS = "infra"
PAIR = self_signed(["*.example.com", "example.com"])
BACKEND = [{"backendRefs": [{"name": "web", "port": 8080}]}]


def _objects() -> list[dict[str, Any]]:
    listeners = [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {
            "name": "https",
            "port": 443,
            "protocol": "HTTPS",
            "hostname": "a.example.com",
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]},
        },
        {"name": "tls", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
        {"name": "tcp", "port": 9000, "protocol": "TCP"},
    ]
    btp = {
        "apiVersion": "gateway.networking.k8s.io/v1alpha3",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": "btp", "namespace": NS, "uid": "btp"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "validation": {"hostname": "web.example.com", "wellKnownCACertificates": "System"},
        },
    }
    return [
        o.namespace(NS),
        o.gateway_class(),
        o.service("web", NS, [("http", 8080, 3000)]),
        o.endpoint_slice("web", NS, [("http", 3000)], ["10.0.0.1"]),
        o.secret(NS, "cert", PAIR),
        o.gateway("gw", NS, listeners),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.7"),
        o.httproute("h", NS, "gw", BACKEND, sectionName="http"),
        o.httproute("bad", NS, "gw", BACKEND, sectionName="no-such-listener"),
        o.route(
            "GRPCRoute", "g", NS, {"parentRefs": [{"name": "gw", "sectionName": "http"}], "rules": BACKEND}
        ),
        o.route(
            "TLSRoute", "t", NS, {"parentRefs": [{"name": "gw", "sectionName": "tls"}], "rules": BACKEND}
        ),
        o.route(
            "TCPRoute", "c", NS, {"parentRefs": [{"name": "gw", "sectionName": "tcp"}], "rules": BACKEND}
        ),
        btp,
    ]


def _conditions(status: Any) -> list[dict[str, Any]]:
    """Every condition anywhere in a status (top level, listeners, route parents, policy ancestors)."""
    out: list[dict[str, Any]] = []
    if isinstance(status, dict):
        if "type" in status and "status" in status and "reason" in status:
            out.append(status)
        for v in status.values():
            out += _conditions(v)
    elif isinstance(status, list):
        for v in status:
            out += _conditions(v)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_every_condition_follows_its_objects_generation(seed: int) -> None:
    rng = random.Random(seed)
    objs = _objects()
    gens: dict[tuple[str, str], int] = {}
    for obj in objs:
        g = rng.randint(1, 50)
        obj["metadata"]["generation"] = g
        gens[(obj["kind"], obj["metadata"]["name"])] = g
    t = translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))
    kinds = {s.kind for s in t.statuses}
    assert {
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "TLSRoute",
        "TCPRoute",
        "BackendTLSPolicy",
    } <= kinds
    checked = 0
    for s in t.statuses:
        want = gens[(s.kind, s.name)]
        for c in _conditions(s.status):
            assert c.get("observedGeneration") == want, (s.kind, s.name, c)
            checked += 1
    assert checked > 20
    for info in t.gateways.values():
        merged = with_programmed(t.statuses[info.status_patch_index], info, True)
        for c in _conditions(merged.status):
            assert c["observedGeneration"] == gens[("Gateway", "gw")], c


def test_a_patch_that_bumps_one_generation_moves_only_that_objects_conditions() -> None:
    objs = _objects()
    before = translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))
    for obj in objs:
        if obj["kind"] == "HTTPRoute" and obj["metadata"]["name"] == "h":
            obj["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/v2"}}]
            obj["metadata"]["generation"] = 2
    after = translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:01Z"))
    for s_before, s_after in zip(before.statuses, after.statuses, strict=True):
        gens = {c.get("observedGeneration") for c in _conditions(s_after.status)}
        if (s_after.kind, s_after.name) == ("HTTPRoute", "h"):
            assert gens == {2}
        else:
            assert gens == {c.get("observedGeneration") for c in _conditions(s_before.status)}
