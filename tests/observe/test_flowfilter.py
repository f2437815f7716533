"""Hubble-style flow filters: each flag against matching and non-matching flows."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.flowfilter import FilterError, FlowFilter, build_filters, matches
from tests.observe.flows import DEV, FE, HTTP_REQ, WEB, WORLD, flow

F_FE_WEB = flow(FE, WEB)  # prod/fe-abc → prod/web-7d9f:80 tcp, trace, forwarded, ingress
F_DEV_WEB_DROP = flow(
    DEV, WEB, sip="10.244.2.9", verdict="DROPPED", etype=1, reason="POLICY_DENIED", node="node-2"
)
F_WEB_WORLD_UDP = flow(WEB, WORLD, sip="10.244.1.7", dip="1.1.1.1", proto="udp", dport=53, direction="EGRESS")
F_ICMP = flow(FE, DEV, proto="icmp", etype=5)
F_L7 = flow(FE, WEB, l7=HTTP_REQ, etype=129)
F_SCTP = flow(FE, WEB, proto="sctp", dport=9999)
ALL = {"fe-web": F_FE_WEB, "dev-web-drop": F_DEV_WEB_DROP, "web-world-udp": F_WEB_WORLD_UDP,
       "icmp": F_ICMP, "l7": F_L7, "sctp": F_SCTP}  # fmt: skip

CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("no-filter", {}, set(ALL)),
    ("from-pod-ns-prefix", {"from_pod": ["prod/fe"]}, {"fe-web", "icmp", "l7", "sctp"}),
    (
        "from-pod-bare-prefix-any-namespace",
        {"from_pod": ["fe-"]},
        {"fe-web", "dev-web-drop", "icmp", "l7", "sctp"},
    ),
    ("to-pod", {"to_pod": ["dev/"]}, {"icmp"}),
    ("pod-either-side", {"pod": ["dev/fe-xyz"]}, {"dev-web-drop", "icmp"}),
    ("namespace-either-side", {"namespace": ["dev"]}, {"dev-web-drop", "icmp"}),
    (
        "from-label-with-and-without-k8s",
        {"from_label": ["app=fe,k8s:tier=front"]},
        {"fe-web", "icmp", "l7", "sctp"},
    ),
    ("to-label-reserved", {"to_label": ["reserved:world"]}, {"web-world-udp"}),
    ("label-not-equal", {"from_label": ["app!=fe"]}, {"web-world-udp"}),
    (
        "label-exists-and-negated",
        {"from_label": ["tier"], "to_label": ["!tier"]},
        {"fe-web", "icmp", "l7", "sctp"},
    ),
    ("from-identity", {"from_identity": ["1002"]}, {"dev-web-drop"}),
    ("to-identity-reserved-name", {"to_identity": ["world"]}, {"web-world-udp"}),
    ("identity-either-side", {"identity": ["1002"]}, {"dev-web-drop", "icmp"}),
    ("ip-either-side", {"ip": ["1.1.1.1"]}, {"web-world-udp"}),
    ("ip-cidr", {"from_ip": ["10.244.2.0/24"]}, {"dev-web-drop"}),
    ("port-either-side", {"port": ["53"]}, {"web-world-udp"}),
    ("to-port", {"to_port": ["9999"]}, {"sctp"}),
    ("verdict", {"verdict": ["dropped"]}, {"dev-web-drop"}),
    ("protocol-udp", {"protocol": ["udp"]}, {"web-world-udp"}),
    ("protocol-icmp-or-sctp", {"protocol": ["icmp", "SCTP"]}, {"icmp", "sctp"}),
    ("type-drop", {"types": ["drop"]}, {"dev-web-drop"}),
    ("type-policy-verdict", {"types": ["policy-verdict"]}, {"icmp"}),
    ("type-trace", {"types": ["trace"]}, {"fe-web", "web-world-udp", "sctp"}),
    ("type-l7", {"types": ["l7"]}, {"l7"}),
    ("traffic-direction", {"traffic_direction": ["egress"]}, {"web-world-udp"}),
    ("node", {"node": ["node-2"]}, {"dev-web-drop"}),
    ("and-across-fields", {"from_pod": ["prod/"], "protocol": ["tcp"], "to_port": ["80"]}, {"fe-web", "l7"}),
    (
        "either-sides-pair-hubble-style",
        {"ip": ["10.244.1.7"], "port": ["80"]},
        {"fe-web", "dev-web-drop", "l7"},
    ),
]


@pytest.mark.parametrize(("kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_filter(kw: dict[str, Any], expected: set[str]) -> None:
    allow = build_filters(**kw)
    assert {name for name, f in ALL.items() if matches(f, allow)} == expected


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"port": ["http"]}, "port 'http' is not a port number"),
        ({"ip": ["10.0.0.300"]}, "ip '10.0.0.300' is not an address or CIDR"),
        ({"verdict": ["maybe"]}, "verdict 'maybe' is not one of"),
        ({"protocol": ["quic"]}, "protocol 'quic' is not one of"),
        ({"types": ["capture"]}, "type 'capture' is not one of"),
        ({"from_identity": ["moon"]}, "identity 'moon' is not a number"),
        ({"traffic_direction": ["up"]}, "traffic direction 'up' is not"),
    ],
    ids=["port", "ip", "verdict", "protocol", "type", "identity", "direction"],
)
def test_bad_filter_values(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        build_filters(**kw)


def test_deny_filters_exclude() -> None:
    deny = [FlowFilter(verdict=["DROPPED"])]
    assert not matches(F_DEV_WEB_DROP, [], deny)
    assert matches(F_FE_WEB, [], deny)


def test_flow_without_l4_or_endpoints_never_crashes() -> None:
    from nodemesh.messages.flow import Flow

    bare = Flow(time="", verdict="FORWARDED")
    for kw in ({"pod": ["x"]}, {"port": ["1"]}, {"ip": ["1.2.3.4"]}, {"label": ["a"]}, {"protocol": ["tcp"]},
               {"identity": ["5"]}, {"types": ["l7"]}):  # fmt: skip
        assert not matches(bare, build_filters(**kw))
