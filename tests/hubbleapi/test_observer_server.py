"""``nodemesh hubble serve``: Hubble's observer.Observer over the stream FLOWS, called as the hubble CLI
calls it (gRPC, Hubble's message definitions) against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from meshctl.hubbleapi import messages
from meshctl.observer_server import ObserverServer
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.messages.flow import Flow
from nodemesh.messages.identity import NodeInfo
from nodemesh.streams import BUCKET_NODES, node_key
from tests.hubbleapi.protos import strict_response
from tests.observe.flows import DEV, FE, WEB, flow

M = messages()


@pytest.fixture
async def server(bus: Bus) -> AsyncIterator[tuple[ObserverServer, grpc.aio.Channel]]:
    s = ObserverServer(bus)
    port = await s.start("127.0.0.1:0")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield s, ch
    await ch.close()
    await s.stop()


async def _publish(bus: Bus, flows: list[Flow], node: str = "node-1") -> None:
    for f in flows:
        await bus.js.publish(subjects.flows(node), encode(f))


def _call(ch: grpc.aio.Channel, method: str, stream: bool = False) -> Any:
    req, resp = {
        "GetFlows": ("GetFlowsRequest", "GetFlowsResponse"),
        "ServerStatus": ("ServerStatusRequest", "ServerStatusResponse"),
        "GetNodes": ("GetNodesRequest", "GetNodesResponse"),
    }[method]
    make = ch.unary_stream if stream else ch.unary_unary
    return make(
        f"/observer.Observer/{method}",
        request_serializer=M[f"observer.{req}"].SerializeToString,
        response_deserializer=M[f"observer.{resp}"].FromString,
    )


def _request(**fields: Any) -> Any:
    r = M["observer.GetFlowsRequest"]()
    json_format.ParseDict(fields, r)
    return r


async def test_get_flows_last_n_with_whitelist_and_blacklist(
    server: tuple[ObserverServer, grpc.aio.Channel], bus: Bus
) -> None:
    _, ch = server
    await _publish(bus, [flow(FE, WEB, dport=8080), flow(FE, WEB, dport=8081), flow(DEV, WEB, dport=8082)])
    got = [r async for r in _call(ch, "GetFlows", stream=True)(_request(number=2))]
    assert [r.flow.l4.TCP.destination_port for r in got] == [8081, 8082]
    assert all(r.node_name == "node-1" and r.time.seconds > 0 for r in got)
    # what the hubble CLI receives is Hubble's message: its JSON decodes strictly
    strict_response(json_format.MessageToJson(got[0], preserving_proto_field_name=True))
    req = _request(
        number=10, whitelist=[{"source_pod": ["prod/"]}], blacklist=[{"destination_port": ["8081"]}]
    )
    got = [r async for r in _call(ch, "GetFlows", stream=True)(req)]
    assert [r.flow.l4.TCP.destination_port for r in got] == [8080]
    req = _request(number=10, whitelist=[{"verdict": ["FORWARDED"], "source_workload": [{"name": "fe-xyz"}]}])
    assert [r async for r in _call(ch, "GetFlows", stream=True)(req)] == []


async def test_get_flows_follow_streams_new_flows(
    server: tuple[ObserverServer, grpc.aio.Channel], bus: Bus
) -> None:
    _, ch = server
    await _publish(bus, [flow(FE, WEB, dport=1)])
    call = _call(ch, "GetFlows", stream=True)(_request(number=1, follow=True))
    first = await asyncio.wait_for(call.read(), 30)
    assert first.flow.l4.TCP.destination_port == 1
    await _publish(bus, [flow(DEV, WEB, dport=2)])
    second = await asyncio.wait_for(call.read(), 30)
    assert second.flow.l4.TCP.destination_port == 2
    call.cancel()


async def test_unsupported_filters_are_refused(server: tuple[ObserverServer, grpc.aio.Channel]) -> None:
    _, ch = server
    with pytest.raises(grpc.aio.AioRpcError) as e:
        [r async for r in _call(ch, "GetFlows", stream=True)(_request(whitelist=[{"source_fqdn": ["a.b"]}]))]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source_fqdn is not supported" in (e.value.details() or "")


async def test_server_status_and_nodes(server: tuple[ObserverServer, grpc.aio.Channel], bus: Bus) -> None:
    _, ch = server
    kv = await bus.js.key_value(BUCKET_NODES.name)
    for name in ("node-1", "node-2"):
        info = NodeInfo(name=name, address="10.0.0.1", pod_cidr="10.244.1.0/24")
        await kv.put(node_key(name), encode(info))
    await _publish(bus, [flow(FE, WEB)] * 3)
    st = await _call(ch, "ServerStatus")(M["observer.ServerStatusRequest"]())
    assert st.num_flows == 3 and st.seen_flows == 3 and st.num_connected_nodes.value == 2
    assert st.version.startswith("nodemesh ") and st.uptime_ns > 0
    nodes = await _call(ch, "GetNodes")(M["observer.GetNodesRequest"]())
    assert [(n.name, n.state) for n in nodes.nodes] == [("node-1", 1), ("node-2", 1)]  # NODE_CONNECTED
