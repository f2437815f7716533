"""HTTP golden signals in Hubble's metric names (research §4.4), from L7 records.

Counted once per completed request, from the response (Hubble's ``httpV2`` handler), with the context
labels (services/datapath/metricscontext.py, Hubble's sourceContext/destinationContext/labelsContext)
from the request's perspective: client → server. By default ``source``/``destination`` are
``namespace/workload`` (or the reserved identity such as ``reserved:world``), never a pod or IP: the
label set stays bounded by the number of workloads, not pods or clients. Path is not a label
(cilium#26521: unbounded).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.datapath.accesslog.convert import L7Record
from services.datapath.metricscontext import DEFAULT_CONTEXT, ContextOptions, parse_context

__all__ = ["AccessLogMetrics", "reporter"]


def reporter(direction: str) -> str:
    """Hubble's ``reporter``: the server side reports INGRESS flows, the client side EGRESS ones."""
    return {"INGRESS": "server", "EGRESS": "client"}.get(direction, "unknown")


class AccessLogMetrics:
    def __init__(self, registry: CollectorRegistry, context: ContextOptions | str = DEFAULT_CONTEXT) -> None:
        self.context = parse_context(context) if isinstance(context, str) else context
        ctx = self.context.names()
        self.requests = Counter(
            "hubble_http_requests",
            "HTTP requests (counted when they complete, httpV2)",
            ["method", "protocol", "reporter", "status", *ctx],
            registry=registry,
        )
        # Prometheus default buckets, as Hubble.
        self.duration = Histogram(
            "hubble_http_request_duration_seconds",
            "HTTP request duration: request start to last response byte sent, as Envoy measures it",
            ["method", "reporter", *ctx],
            registry=registry,
        )
        self.responses = Counter(
            "hubble_http_responses",
            "HTTP responses by status code",
            ["status", "method", *ctx],
            registry=registry,
        )
        self.dropped = Counter(
            "nodemesh_accesslog_entries_dropped",
            "Access log messages or entries that could not be decoded or were too large",
            ["reason"],
            registry=registry,
        )
        self.entries = Counter(
            "nodemesh_accesslog_entries", "HTTP access log entries turned into flows", registry=registry
        )
        self.streams = Gauge(
            "nodemesh_accesslog_streams", "Open access log streams from Envoy", registry=registry
        )
        self.publish_errors = Counter(
            "nodemesh_accesslog_publish_errors", "Flows that could not be published", registry=registry
        )
        for reason in ("decode", "oversized", "convert"):
            self.dropped.labels(reason)  # exported at 0, so rate() works before the first drop

    def observe(self, r: L7Record) -> None:
        self.entries.inc()
        rep = reporter(r.direction)
        ctx = self.context.values(r.request)  # the request's perspective: client → server
        status = str(r.code) if r.code else "0"
        self.requests.labels(r.method, r.protocol, rep, status, *ctx).inc()
        self.responses.labels(status, r.method, *ctx).inc()
        self.duration.labels(r.method, rep, *ctx).observe(r.latency_ns / 1e9)
