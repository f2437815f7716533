"""Hand-built Envoy HTTP access log entries and messages, shaped as Envoy 1.40 sends them."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2

HTTP11 = al.HTTPAccessLogEntry.HTTPVersion.HTTP11


def addr(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def entry(
    *,
    method: str = "GET",
    path: str = "/",
    code: int | None = 200,
    client: tuple[str, int] = ("10.244.1.5", 40000),
    local: tuple[str, int] = ("127.0.100.1", 8080),
    upstream: tuple[str, int] | None = ("10.244.2.7", 3000),
    latency_ms: int = 12,
    start: tuple[int, int] = (1_700_000_000, 5),
    request_id: str = "rid-1",
    details: str = "via_upstream",
) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry(protocol_version=HTTP11)
    c = e.common_properties
    c.downstream_remote_address.CopyFrom(addr(*client))
    c.downstream_local_address.CopyFrom(addr(*local))
    if upstream is not None:
        c.upstream_remote_address.CopyFrom(addr(*upstream))
        c.upstream_cluster = "default:echo:80"
    c.start_time.seconds, c.start_time.nanos = start
    c.time_to_last_downstream_tx_byte.FromMilliseconds(latency_ms)
    e.request.request_method = base_pb2.RequestMethod.Value(method)
    e.request.scheme = "http"
    e.request.authority = "example.com"
    e.request.path = path
    e.request.request_id = request_id
    if code is not None:
        e.response.response_code.value = code
        e.response.response_code_details = details
    return e


def message(*entries: al.HTTPAccessLogEntry, node: str = "") -> als_pb2.StreamAccessLogsMessage:
    m = als_pb2.StreamAccessLogsMessage()
    if node:
        m.identifier.node.id = node
        m.identifier.log_name = "nodemesh"
    m.http_logs.log_entry.extend(entries)
    return m
