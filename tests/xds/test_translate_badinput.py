"""Malformed objects never crash translation: they are skipped or become status, the rest still works."""

from __future__ import annotations

import random
from typing import Any

import pytest

from conformance import objects as o
from services.xds.translate import LISTENER, TranslateInput, translate

KINDS = [
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "TCPRoute",
    "ReferenceGrant",
    "Ingress",
    "IngressClass",
    "Service",
    "EndpointSlice",
    "Secret",
    "Namespace",
    "CiliumEnvoyConfig",
]
JUNK: list[Any] = [None, 1, "x", [], {}, [1, "a"], {"a": None}, True, -5, {"name": 3}]


def _mutations(obj: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Replace one random leaf or branch of ``obj`` by junk (a deep copy)."""
    import copy

    out = copy.deepcopy(obj)
    node: Any = out
    for _ in range(rng.randrange(1, 6)):
        if isinstance(node, dict) and node:
            k = rng.choice(list(node))
            if rng.random() < 0.4 or not isinstance(node[k], (dict, list)):
                node[k] = rng.choice(JUNK)
                return out
            node = node[k]
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if rng.random() < 0.4 or not isinstance(node[i], (dict, list)):
                node[i] = rng.choice(JUNK)
                return out
            node = node[i]
    return out


def _good() -> list[dict[str, Any]]:
    return [
        o.namespace("ns"),
        o.gateway_class(),
        o.gateway(
            "gw",
            "ns",
            [
                {"name": "h", "port": 80, "protocol": "HTTP", "hostname": "*.a.com"},
                {"name": "s", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}},
            ],
        ),
        o.lb_service("ns", "cilium-gateway-gw", "127.0.100.1"),
        o.service("web", "ns", [("http", 8080, 3000)]),
        o.endpoint_slice("web", "ns", [("http", 3000)], ["10.0.0.1"]),
        o.httproute(
            "r",
            "ns",
            "gw",
            [
                {
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/x"},
                            "headers": [{"name": "a", "value": "b"}],
                        }
                    ],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "web", "port": 8080}},
                        }
                    ],
                    "backendRefs": [{"name": "web", "port": 8080, "weight": 2}],
                }
            ],
            hostnames=["x.a.com"],
        ),
        o.grant("ns", "g", "HTTPRoute", "other", "Service"),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "i", "namespace": "ns"},
            "spec": {
                "ingressClassName": "nodemesh",
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "web", "port": {"number": 8080}}},
                                }
                            ]
                        }
                    }
                ],
            },
        },
    ]


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("FUZZ_SEEDS", "300"))))
def test_random_corruption_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    objs = _good()
    i = rng.randrange(len(objs))
    objs[i] = _mutations(objs[i], rng)
    if rng.random() < 0.3:
        objs.append(
            {
                "kind": rng.choice(KINDS),
                "metadata": {"name": "junk", "namespace": "ns"},
                "spec": rng.choice(JUNK),
            }
        )
    t = translate(TranslateInput(objects=o.inputs(*[x for x in objs if isinstance(x, dict) and "kind" in x])))
    assert isinstance(t.statuses, list)


@pytest.mark.parametrize("junk", JUNK)
def test_junk_objects_of_every_kind_leave_good_config_intact(junk: Any) -> None:
    objs = _good() + [
        {"kind": k, "metadata": {"name": "junk", "namespace": "ns"}, "spec": junk} for k in KINDS
    ]
    objs += [{"kind": "HTTPRoute", "metadata": junk}, {"kind": "Gateway"}]
    t = translate(TranslateInput(objects=o.inputs(*objs)))
    assert "ns/cilium-gateway-gw/listener-80" in t.resources[LISTENER]
