"""``nodemesh observe -o json`` lines decode as Hubble's observer.GetFlowsResponse in strict mode.

Every kind of flow nodemesh makes — traces (to/from endpoint, to proxy, replies), drops (policy,
auth required), policy verdicts, L7 requests and responses, authenticated flows — is made by the
real producers (services/datapath/flows.py from ring-buffer events, the access log converter from
Envoy entries), published to a real nats-server, printed by ``observe -o json`` and decoded with
protobuf descriptors that follow Hubble's published definitions (tests/hubbleapi/proto): an unknown
field, a wrong enum name or a wrongly typed value fails the test.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from google.protobuf.message import Message

from nodemesh.messages.flow import Flow
from services.datapath.accesslog.convert import DIRECTION_TAG, convert
from services.datapath.flows import event_to_flow
from services.datapath.maps import (
    DIR_EGRESS,
    DIR_INGRESS,
    EVT_DROP,
    EVT_POLICY_VERDICT,
    EVT_TRACE,
    Event,
    ip_to_be32,
)
from testkit.accesslog_entries import entry
from testkit.natsserver import NatsServer
from tests.hubbleapi.protos import compiled, strict_response
from tests.observe.test_observe_cli import data_dir, observe, publish

__all__ = ["data_dir"]  # the fixture, reused


class Dir:
    node = "node-1"
    version = 0
    pods = {"10.244.1.5": ("shop", "web-5d8f7c9b6-abcde"), "10.244.2.7": ("shop", "db-0")}
    labels = {1001: ["k8s:app=web"], 1002: ["k8s:app=db"], 2: ["reserved:world"]}

    def pod_of(self, ip: str) -> tuple[str, str]:
        return self.pods.get(ip, ("", ""))

    def labels_of(self, identity: int) -> list[str]:
        return self.labels.get(identity, [])

    def node_name(self, node_id: int) -> str:
        return "node-1"


def _ev(**kw: int) -> Event:
    base = dict(
        ts_ns=5_000_000_123, saddr=ip_to_be32("10.244.1.5"), daddr=ip_to_be32("10.244.2.7"),
        src_identity=1001, dst_identity=1002, sport=socket.htons(40000), dport=socket.htons(5432),
        ep_id=7, proto=6, tcp_flags=0x02, dir=DIR_EGRESS, type=EVT_TRACE,
    )  # fmt: skip
    base.update(kw)
    return Event(**base)


def _flows() -> dict[str, Flow]:
    d, off = Dir(), 1_700_000_000 * 10**9
    web, db = ip_to_be32("10.244.1.5"), ip_to_be32("10.244.2.7")
    reply = dict(saddr=db, daddr=web, sport=socket.htons(5432), dport=socket.htons(40000))
    l7 = convert(
        entry(method="POST", path="/cart?token=1", code=201, latency_ms=12), "node-1", lambda ip: None
    )
    gw = entry(code=403, details="rbac_access_denied_matched_policy[none]", upstream=None)
    gw.common_properties.custom_tags[DIRECTION_TAG] = "INGRESS"  # as Gateway listeners tag it
    denied = convert(gw, "node-1", lambda ip: None)
    return {
        "trace-from-endpoint": event_to_flow(_ev(), d, off),
        "trace-to-endpoint": event_to_flow(_ev(dir=DIR_INGRESS, ep_id=9), d, off),
        "trace-reply": event_to_flow(_ev(dir=DIR_INGRESS, is_reply=1, tcp_flags=0x12, **reply), d, off),
        "trace-to-proxy": event_to_flow(_ev(dir=DIR_INGRESS, proxy_port=socket.htons(15001)), d, off),
        "trace-udp": event_to_flow(_ev(proto=17, tcp_flags=0), d, off),
        "trace-icmp": event_to_flow(_ev(proto=1, tcp_flags=0, sport=0, dport=0, icmp_type=8), d, off),
        "drop-policy": event_to_flow(_ev(type=EVT_DROP, drop_reason=133, dir=DIR_INGRESS), d, off),
        "drop-auth": event_to_flow(_ev(type=EVT_DROP, drop_reason=189, auth_type=1), d, off),
        "drop-unnamed": event_to_flow(_ev(type=EVT_DROP, drop_reason=140), d, off),
        "policy-verdict": event_to_flow(_ev(type=EVT_POLICY_VERDICT, match_type=2), d, off),
        "auth-spire": event_to_flow(_ev(auth_type=1), d, off),
        "l7-request": l7.request,
        "l7-response": l7.response,
        "l7-denied-response": denied.response,
    }


FLOWS = _flows()


@pytest.fixture
def printed(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> dict[str, Message]:
    publish(nats_server, list(FLOWS.values()))
    rc, lines, err = observe(data_dir, capsys, "-o", "json", "--last", "100")
    assert rc == 0 and not err and len(lines) == len(FLOWS)
    return {kind: strict_response(line) for kind, line in zip(FLOWS, lines, strict=True)}


def test_every_kind_decodes_strictly_with_hubbles_definitions(printed: dict[str, Message]) -> None:
    flow_pb2, _ = compiled()
    for kind, resp in printed.items():
        f = resp.flow  # type: ignore[attr-defined]
        assert resp.node_name == "node-1", kind  # type: ignore[attr-defined]
        assert resp.time == f.time and f.time.seconds >= 1_700_000_000, kind  # type: ignore[attr-defined]
        assert uuid.UUID(f.uuid), kind
        assert f.HasField("is_reply"), kind  # known for every flow nodemesh makes
        assert f.IP.ipVersion == flow_pb2.IPv4, kind
        want_type = flow_pb2.L7 if kind.startswith("l7") else flow_pb2.L3_L4
        assert f.Type == want_type, kind


def test_trace_fields(printed: dict[str, Message]) -> None:
    flow_pb2, _ = compiled()
    out = printed["trace-from-endpoint"].flow  # type: ignore[attr-defined]
    assert out.event_type.type == 4 and out.event_type.sub_type == 5
    assert out.trace_observation_point == flow_pb2.FROM_ENDPOINT
    assert out.traffic_direction == flow_pb2.EGRESS and out.verdict == flow_pb2.FORWARDED
    assert out.source.pod_name == "web-5d8f7c9b6-abcde" and out.source.ID == 7
    assert [(w.name, w.kind) for w in out.source.workloads] == [("web", "Deployment")]
    assert [(w.name, w.kind) for w in out.destination.workloads] == [("db", "StatefulSet")]
    assert not out.is_reply.value and out.l4.TCP.flags.SYN
    into = printed["trace-to-endpoint"].flow  # type: ignore[attr-defined]
    assert into.trace_observation_point == flow_pb2.TO_ENDPOINT and into.event_type.sub_type == 0
    proxy = printed["trace-to-proxy"].flow  # type: ignore[attr-defined]
    assert proxy.trace_observation_point == flow_pb2.TO_PROXY and proxy.event_type.sub_type == 1
    assert proxy.verdict == flow_pb2.REDIRECTED
    rep = printed["trace-reply"].flow  # type: ignore[attr-defined]
    assert rep.is_reply.value and rep.l4.TCP.flags.ACK and rep.l4.TCP.flags.SYN
    assert printed["trace-udp"].flow.l4.UDP.destination_port == 5432  # type: ignore[attr-defined]
    assert printed["trace-icmp"].flow.l4.ICMPv4.type == 8  # type: ignore[attr-defined]


def test_drop_policy_verdict_and_auth_fields(printed: dict[str, Message]) -> None:
    flow_pb2, _ = compiled()
    drop = printed["drop-policy"].flow  # type: ignore[attr-defined]
    assert drop.verdict == flow_pb2.DROPPED and drop.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert drop.event_type.type == 1 and drop.event_type.sub_type == 133
    assert drop.trace_observation_point == flow_pb2.UNKNOWN_POINT  # traces only
    auth = printed["drop-auth"].flow  # type: ignore[attr-defined]
    assert auth.drop_reason_desc == flow_pb2.AUTH_REQUIRED and auth.auth_type == flow_pb2.SPIRE
    assert printed["drop-unnamed"].flow.drop_reason_desc == flow_pb2.MISSED_TAIL_CALL  # type: ignore[attr-defined]
    pv = printed["policy-verdict"].flow  # type: ignore[attr-defined]
    assert pv.event_type.type == 5 and pv.policy_match_type == 2
    assert printed["auth-spire"].flow.auth_type == flow_pb2.SPIRE  # type: ignore[attr-defined]


def test_l7_fields(printed: dict[str, Message]) -> None:
    flow_pb2, _ = compiled()
    req = printed["l7-request"].flow  # type: ignore[attr-defined]
    assert req.l7.type == flow_pb2.REQUEST and req.l7.http.method == "POST" and not req.is_reply.value
    assert req.l7.http.url == "http://example.com/cart?HUBBLE_REDACTED"
    assert req.event_type.type == 129
    resp = printed["l7-response"].flow  # type: ignore[attr-defined]
    assert resp.l7.type == flow_pb2.RESPONSE and resp.l7.http.code == 201 and resp.is_reply.value
    assert resp.l7.latency_ns == 12_000_000
    # Envoy answered itself on a Gateway listener's own address: that side is reserved:ingress.
    denied = printed["l7-denied-response"].flow  # type: ignore[attr-defined]
    assert denied.verdict == flow_pb2.DROPPED and denied.source.identity == 8
    assert list(denied.source.labels) == ["reserved:ingress"]


def test_latency_is_printed_as_protojson_prints_a_uint64(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(nats_server, [FLOWS["l7-response"]])
    rc, lines, _ = observe(data_dir, capsys, "-o", "jsonpb", "--last", "1")
    assert rc == 0 and '"latency_ns":"12000000"' in lines[0]
    assert '"is_reply":true' in lines[0] and '"node_name"' not in lines[0].split('"source"')[1]


def test_a_field_hubble_lacks_fails_strict_decoding() -> None:
    # The check above can fail: what nodemesh printed before (an endpoint's node_name) is rejected.
    line = '{"flow":{"source":{"pod_name":"web","node_name":"node-1"}}}'
    with pytest.raises(Exception, match="node_name"):
        strict_response(line)
