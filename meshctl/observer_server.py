"""An ``observer.Observer`` gRPC endpoint over the stream FLOWS, for the hubble CLI (``--server``).

``GetFlows`` (number, follow, since/until, whitelist/blacklist FlowFilters), ``ServerStatus`` and
``GetNodes`` (Hubble's observer.proto, restated in meshctl/hubbleapi). Flows are read exactly as
``nodemesh observe`` reads them (observe_stream: history, then an ordered consumer) and sent as the
protobuf form of the protojson ``observe -o json`` prints. What nodemesh cannot filter on (FQDNs, DNS
queries, trace ids, TCP flags, …) is refused with INVALID_ARGUMENT naming the field, not ignored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from nats.js.errors import NotFoundError

from meshctl.flowfilter import FlowFilter
from meshctl.hubbleapi import messages
from meshctl.hubbleprint import response
from meshctl.observe_stream import Query, follow, history
from nodemesh import __version__, subjects
from nodemesh.bus import Bus
from nodemesh.errors import NodemeshError
from nodemesh.streams import BUCKET_NODES, STREAM_FLOWS

__all__ = ["ObserverServer", "filter_from_proto"]

_SERVICE = "observer.Observer"
#: FlowFilter fields nodemesh's filters have no counterpart for
_UNSUPPORTED = ("uuid", "source_fqdn", "destination_fqdn", "reply", "dns_query", "tcp_flags", "ip_version",
                "trace_id")  # fmt: skip
_PROTOCOLS = {"icmpv4": "icmp"}


class FilterNotSupported(ValueError):
    pass


def _workloads(ws: Any) -> list[str]:
    return [f"{w.kind}/{w.name}" if w.kind else w.name for w in ws]


def filter_from_proto(pb: Any) -> FlowFilter:
    """A Hubble ``flow.FlowFilter`` message as nodemesh's FlowFilter (same matching semantics)."""
    for name in _UNSUPPORTED:
        if len(getattr(pb, name)):
            raise FilterNotSupported(f"filter field {name} is not supported by nodemesh")
    for et in pb.event_type:
        if et.match_sub_type:
            raise FilterNotSupported("filter field event_type.sub_type is not supported by nodemesh")
    enum = pb.DESCRIPTOR.fields_by_name
    verdicts = enum["verdict"].enum_type.values_by_number
    directions = enum["traffic_direction"].enum_type.values_by_number
    return FlowFilter(
        source_ip=list(pb.source_ip),
        destination_ip=list(pb.destination_ip),
        source_pod=list(pb.source_pod),
        destination_pod=list(pb.destination_pod),
        source_label=list(pb.source_label),
        destination_label=list(pb.destination_label),
        source_service=list(pb.source_service),
        destination_service=list(pb.destination_service),
        source_workload=_workloads(pb.source_workload),
        destination_workload=_workloads(pb.destination_workload),
        source_identity=list(pb.source_identity),
        destination_identity=list(pb.destination_identity),
        source_port=[int(p) for p in pb.source_port],
        destination_port=[int(p) for p in pb.destination_port],
        verdict=[verdicts[v].name for v in pb.verdict],
        traffic_direction=[directions[d].name for d in pb.traffic_direction],
        event_type=[str(e.type) for e in pb.event_type],
        protocol=[_PROTOCOLS.get(p.lower(), p.lower()) for p in pb.protocol],
        http_status_code=list(pb.http_status_code),
        http_method=[m.upper() for m in pb.http_method],
        http_path=list(pb.http_path),
        node_name=list(pb.node_name),
    )


def _time(ts: Any) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


class ObserverServer:
    def __init__(self, bus: Bus, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.m = messages()
        self._clock = clock
        self._started = clock()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, listen: str = "127.0.0.1:4245") -> int:
        """Serve on ``listen`` (port 0 picks one); returns the port. Raises OSError if it cannot bind."""
        m = self.m
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                self.get_flows,
                request_deserializer=m["observer.GetFlowsRequest"].FromString,
                response_serializer=m["observer.GetFlowsResponse"].SerializeToString,
            ),
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                self.server_status,
                request_deserializer=m["observer.ServerStatusRequest"].FromString,
                response_serializer=m["observer.ServerStatusResponse"].SerializeToString,
            ),
            "GetNodes": grpc.unary_unary_rpc_method_handler(
                self.get_nodes,
                request_deserializer=m["observer.GetNodesRequest"].FromString,
                response_serializer=m["observer.GetNodesResponse"].SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError:
            port = 0
        if not port:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self._server, self.port = server, int(port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # --- RPCs -------------------------------------------------------------------------------------
    async def get_flows(self, req: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            q = Query(
                allow=[filter_from_proto(f) for f in req.whitelist],
                deny=[filter_from_proto(f) for f in req.blacklist],
                since=_time(req.since) if req.HasField("since") else None,
                until=_time(req.until) if req.HasField("until") else None,
                last=int(req.number),
            )
        except (FilterNotSupported, ValueError) as e:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        if req.first:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "first is not supported by nodemesh")
            return
        # Hubble: number or since/until; neither and no follow = the whole buffer
        q.unlimited = q.since is not None and not req.number
        if not req.number and q.since is None and not req.follow:
            q.unlimited, q.since = True, datetime.fromtimestamp(0, UTC)
        try:
            found, seq = await history(self.bus.js, q)
        except NodemeshError as e:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            return
        for flow in found:
            yield self._response(flow)
        if req.follow:
            async for flow in follow(self.bus.js, q, seq):
                yield self._response(flow)

    def _response(self, flow: Any) -> Any:
        msg = self.m["observer.GetFlowsResponse"]()
        json_format.ParseDict(response(flow), msg)
        return msg

    async def server_status(self, _req: Any, _ctx: Any) -> Any:
        nodes = await self._nodes()
        info = None
        with contextlib.suppress(NotFoundError):
            info = await self.bus.js.stream_info(STREAM_FLOWS.name)
        out = self.m["observer.ServerStatusResponse"](
            num_flows=info.state.messages if info else 0,
            max_flows=max(info.config.max_msgs or 0, 0) if info else 0,
            seen_flows=info.state.last_seq if info else 0,
            uptime_ns=int((self._clock() - self._started) * 1e9),
            version=f"nodemesh {__version__}",
        )
        out.num_connected_nodes.value = len(nodes)
        out.num_unavailable_nodes.value = 0
        return out

    async def get_nodes(self, _req: Any, _ctx: Any) -> Any:
        out = self.m["observer.GetNodesResponse"]()
        connected = self.m["relay.NodeStatusEvent"].DESCRIPTOR.fields_by_name["state_change"].enum_type
        for name in await self._nodes():
            n = out.nodes.add()
            n.name, n.version = name, f"nodemesh {__version__}"
            n.state = connected.values_by_name["NODE_CONNECTED"].number
        return out

    async def _nodes(self) -> list[str]:
        """The cluster's nodes (the ``nodes`` bucket), by name."""
        try:
            kv = await self.bus.js.key_value(BUCKET_NODES.name)
            keys = await kv.keys()
        except Exception:  # no bucket yet, or no keys (nats-py raises NoKeysError)
            return []
        return sorted(subjects.untoken(k) for k in keys)
