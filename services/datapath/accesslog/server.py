"""The node's gRPC access log service: Envoy's HTTP access logs in, L7 flows on NATS out.

Envoy streams ``StreamAccessLogsMessage`` batches (``envoy.service.accesslog.v3.AccessLogService``)
to the ``nodemesh-als`` cluster of its bootstrap, i.e. to this server on ``127.0.0.1:<port>``. Each
HTTP entry becomes a request and a response flow on ``flows.<node>`` (so ``nodemesh observe --type
l7`` shows them and stream FLOWS keeps them) and feeds the Hubble HTTP metrics.

Messages arrive as raw bytes (no deserializer on the method) and are decoded here, so a corrupt or
oversized message is counted in ``nodemesh_accesslog_entries_dropped_total`` and the stream goes on;
with gRPC's own decoding it would end the stream, and with it every later log of that Envoy worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.flow import Flow
from nodemesh.runtime import Service
from services.datapath.accesslog.convert import Enrich, convert
from services.datapath.accesslog.metrics import AccessLogMetrics
from services.datapath.hubblemetrics import FlowMetrics

__all__ = [
    "MAX_ENTRY_BYTES",
    "MAX_MESSAGE_BYTES",
    "SOCKET_NAME",
    "AccessLogServer",
    "listen_address",
    "start_accesslog",
    "start_configured",
]

log = logging.getLogger("nodemesh.datapath.accesslog")

_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
#: A message (one batch of entries) larger than this is dropped whole. Envoy flushes at 16 KiB by
#: default, so this only catches something broken; gRPC itself refuses 4 times this and ends the stream.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: One entry larger than this (huge URL or headers) is dropped, the rest of its batch kept.
MAX_ENTRY_BYTES = 64 * 1024

#: The socket in a node's data dir (local mode: the supervisor gives Envoy the same path).
SOCKET_NAME = "als.sock"
_SUN_PATH_MAX = 108  # struct sockaddr_un.sun_path, NUL included

Publish = Callable[[str, Flow], Awaitable[None]]


class AccessLogServer:
    """Receives Envoy access logs on loopback and publishes L7 flows for ``node``."""

    def __init__(
        self,
        node: str,
        publish: Publish,
        registry: CollectorRegistry,
        enrich: Enrich,
        *,
        direction: str = "INGRESS",
        flow_metrics: FlowMetrics | None = None,
    ) -> None:
        self.node = node
        self.enrich = enrich
        # Gateway/Ingress/lb-l7 listeners receive traffic into the mesh: Hubble's INGRESS.
        self.direction = direction
        # L7 flows count in hubble_flows_processed_total with the node's L3/L4 ones (the app shares one)
        self.flow_metrics = flow_metrics if flow_metrics is not None else FlowMetrics(registry)
        self.metrics = AccessLogMetrics(registry, self.flow_metrics.context)
        self._publish = publish
        self._subject = subjects.flows(node)
        self._server: grpc.aio.Server | None = None
        self._socket = ""
        self.port = 0

    async def start(self, port: int = 0, host: str = "127.0.0.1", *, socket_path: str = "") -> int:
        """Bind ``host:port`` (0 picks one), or the unix socket ``socket_path``, and serve.

        Returns the bound port (0 for a socket)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 4 * MAX_MESSAGE_BYTES),
                # gRPC sets SO_REUSEPORT by default: a second agent on the port would silently get
                # half of Envoy's streams. One node, one receiver: a taken port is an error.
                ("grpc.so_reuseport", 0),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    self._stream,
                    request_deserializer=None,  # raw bytes: decode failures are ours to count
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        where = f"unix:{socket_path}" if socket_path else f"{host}:{port}"
        if len(socket_path.encode()) >= _SUN_PATH_MAX:
            raise OSError(f"cannot bind access log service on {where}: path too long for a unix socket")
        try:
            bound = server.add_insecure_port(where)
        except RuntimeError:  # newer grpcio raises instead of returning 0
            bound = 0
        if not bound:
            raise OSError(f"cannot bind access log service on {where}")
        await server.start()
        self._server, self.port = server, 0 if socket_path else int(bound)
        self._socket = socket_path
        log.info("access log service listening on %s", where)
        return self.port

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
            if self._socket:  # gRPC leaves the socket file; nothing stays behind
                with contextlib.suppress(OSError):
                    os.unlink(self._socket)

    async def _stream(self, requests: AsyncIterator[bytes], _ctx: Any) -> als_pb2.StreamAccessLogsResponse:
        self.metrics.streams.inc()
        try:
            async for raw in requests:
                await self.handle(raw)
        finally:
            self.metrics.streams.dec()
        return als_pb2.StreamAccessLogsResponse()

    async def handle(self, raw: bytes) -> int:
        """One message off the stream; returns how many entries became flows. Never raises on input."""
        if len(raw) > MAX_MESSAGE_BYTES:
            self.metrics.dropped.labels("oversized").inc()
            return 0
        msg = als_pb2.StreamAccessLogsMessage()
        try:
            msg.ParseFromString(raw)
        except (DecodeError, ValueError, RuntimeError):
            self.metrics.dropped.labels("decode").inc()
            return 0
        if msg.HasField("identifier"):
            log.debug("access log stream from %s (%s)", msg.identifier.node.id, msg.identifier.log_name)
        done = 0
        for entry in msg.http_logs.log_entry:
            if entry.ByteSize() > MAX_ENTRY_BYTES:
                self.metrics.dropped.labels("oversized").inc()
                continue
            try:
                rec = convert(entry, self.node, self.enrich, self.direction)
            except Exception:  # a bug, not input: count it, keep the stream
                log.exception("cannot convert access log entry")
                self.metrics.dropped.labels("convert").inc()
                continue
            self.metrics.observe(rec)
            for flow in (rec.request, rec.response):
                self.flow_metrics.observe(flow)
                try:
                    await self._publish(self._subject, flow)
                except Exception as e:  # NATS down: the metrics still count the request
                    self.metrics.publish_errors.inc()
                    log.debug("cannot publish L7 flow: %s", e)
            done += 1
        return done


def bus_publisher(bus: Bus) -> Publish:
    async def publish(subject: str, flow: Flow) -> None:
        await bus.publish(subject, flow)

    return publish


async def start_accesslog(
    svc: Service,
    node: str,
    port: int,
    enrich: Enrich,
    *,
    socket_path: str = "",
    flow_metrics: FlowMetrics | None = None,
) -> AccessLogServer:
    """Serve access logs for ``node``'s Envoy on ``127.0.0.1:port``, or on the unix socket
    ``socket_path`` when given (what local mode uses: no port to allocate, private to the node's
    data dir); stopped with the service. Raises OSError when it cannot bind."""
    server = AccessLogServer(node, bus_publisher(svc.bus), svc.registry, enrich, flow_metrics=flow_metrics)
    await server.start(port, socket_path=socket_path)
    svc.on_stop(server.stop)
    return server


def listen_address(setting: str, data_dir: str) -> tuple[int, str] | None:
    """The datapath's ``accesslog`` setting → ``(port, socket_path)``, or None when off.

    ``""`` = the unix socket ``<data_dir>/als.sock``; ``PORT``, ``:PORT`` or ``127.0.0.1:PORT`` = TCP
    on loopback; ``off`` = no L7 flows. Anything else is a ValueError (a config typo fails at start).
    """
    setting = setting.strip()
    if setting == "off":
        return None
    if not setting:
        return 0, os.path.join(data_dir or ".", SOCKET_NAME)
    if setting.startswith("unix:"):
        return 0, setting.removeprefix("unix:")
    host, _, port = setting.rpartition(":")
    if host not in ("", "127.0.0.1", "localhost") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"accesslog: {setting!r} is not off, unix:PATH or [127.0.0.1:]PORT")
    return int(port), ""


async def start_configured(
    svc: Service,
    node: str,
    setting: str,
    data_dir: str,
    enrich: Enrich,
    flow_metrics: FlowMetrics | None = None,
) -> AccessLogServer | None:
    """What the datapath app calls: start per ``setting`` (see :func:`listen_address`). A receiver
    that cannot bind is logged and skipped: L7 visibility must never keep a node's datapath down."""
    addr = listen_address(setting, data_dir)
    if addr is None:
        return None
    port, path = addr
    try:
        return await start_accesslog(svc, node, port, enrich, socket_path=path, flow_metrics=flow_metrics)
    except OSError as e:
        svc.log.warning("no L7 flows: %s", e)
        return None
