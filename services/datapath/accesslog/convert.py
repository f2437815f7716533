"""Pure: one Envoy HTTP access log entry → a Hubble request flow and a response flow.

Envoy logs a request once, when it completes, so request and response arrive together and the
latency is Envoy's own measurement (no X-Request-Id pairing LRU as Hubble's seven parser needs).
The request flow goes client → server; the response flow is its reply (``is_reply``, endpoints
swapped), as Hubble prints them. Endpoints are resolved by the caller's ``enrich`` (IP → Endpoint,
from the ipcache and identities); an IP it does not know is ``reserved:world`` (identity 2), which is
what the ipcache answers on a miss.

No I/O, no clock: every time comes from the entry.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2

from nodemesh.lbl7 import SERVICE_TAG
from nodemesh.messages.flow import HTTP, IP, L4, L7, TCP, Endpoint, Flow, Service
from nodemesh.workload import pod_workload

__all__ = [
    "DIRECTION_TAG",
    "EVENT_TYPE_L7",
    "Enrich",
    "L7Record",
    "convert",
    "endpoint_label",
    "no_enrich",
    "workload_of",
]

#: Custom tag (``CommonGrpcAccessLogConfig.custom_tags``) by which a listener says whether its traffic
#: enters (Gateway, L7 ingress policy) or leaves (L7 egress policy) the pod: INGRESS or EGRESS.
DIRECTION_TAG = "nodemesh.direction"
#: Hubble's monitor message type of an L7 access log record (MessageTypeAccessLog).
EVENT_TYPE_L7 = 129
WORLD_ID = 2
INGRESS_ID = 8  # reserved:ingress, the identity of the Gateway/Ingress listeners' own side

Enrich = Callable[[str], Endpoint | None]
"""IP → the Endpoint it belongs to (identity, namespace, pod, labels), or None if unknown."""

_PROTOCOLS = {1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 4: "HTTP/3"}
_METHODS = {v: k for k, v in base_pb2.RequestMethod.items() if v}
_MAX_URL = 2048  # a path is user input: bound what every flow and printer carries
_REDACTED = "HUBBLE_REDACTED"  # Hubble's marker for redacted values


def no_enrich(_ip: str) -> Endpoint | None:
    return None


def workload_of(ep: Endpoint | None) -> str:
    """The workload name behind a pod (its Deployment or StatefulSet, from the pod name), else the pod."""
    if ep is None or not ep.pod_name:
        return ""
    w = ep.workloads[0] if ep.workloads else pod_workload(ep.pod_name)
    return w.name if w is not None else ep.pod_name


def endpoint_label(ep: Endpoint | None) -> str:
    """A bounded metric label: ``namespace/workload`` for pods, the reserved name (``world``) otherwise."""
    if ep is None:
        return ""
    if ep.namespace:
        return f"{ep.namespace}/{workload_of(ep)}"
    for lbl in ep.labels:
        if lbl.startswith("reserved:"):
            return lbl.removeprefix("reserved:")
    return ""


@dataclass(frozen=True)
class L7Record:
    """What one entry yields: both flows, and the request-perspective facts metrics are made of."""

    request: Flow
    response: Flow
    method: str
    protocol: str
    code: int  # 0 = no response was sent (the client went away first)
    latency_ns: int
    client: Endpoint
    server: Endpoint
    direction: str


def _addr(a: address_pb2.Address) -> tuple[str, int]:
    if a.HasField("socket_address"):
        return a.socket_address.address, a.socket_address.port_value
    return "", 0


def _time(seconds: int, nanos: int) -> str:
    t = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}Z"


def _endpoint(enrich: Enrich, ip: str) -> Endpoint:
    ep = enrich(ip) if ip else None
    return ep if ep is not None else Endpoint(identity=WORLD_ID, labels=["reserved:world"])


def _listener_side(ep: Endpoint, direction: str) -> Endpoint:
    """The side Envoy answered as, when it answered itself. An L7 policy listener is transparent (the
    address it was sent to is the pod's, resolved as such); a Gateway/Ingress/lb-l7 listener (tagged
    INGRESS) answers on its own address, which is no pod (the ipcache says host or world): that side
    is Envoy's ingress, reserved:ingress, as Cilium attributes its Ingress/Gateway proxy."""
    if direction == "INGRESS" and not ep.pod_name:
        return Endpoint(identity=INGRESS_ID, labels=["reserved:ingress"])
    return ep


def _url(req: accesslog_pb2.HTTPRequestProperties) -> str:
    path = req.path or req.original_path
    if "?" in path:  # queries carry tokens; Hubble's redact.http.urlQuery, on by default here
        path = path.split("?", 1)[0] + "?" + _REDACTED
    scheme = req.scheme or "http"
    url = f"{scheme}://{req.authority}{path}" if req.authority else path
    return url[:_MAX_URL]


def _denied(entry: accesslog_pb2.HTTPAccessLogEntry) -> bool:
    flags = entry.common_properties.response_flags
    details = entry.response.response_code_details
    return bool(flags.HasField("unauthorized_details")) or details.startswith("rbac_access_denied")


def _latency_ns(c: accesslog_pb2.AccessLogCommon) -> int:
    # Envoy's %DURATION%: request start → last byte sent downstream; earlier stamps if it never got there.
    for f in ("time_to_last_downstream_tx_byte", "time_to_first_downstream_tx_byte", "duration"):
        if c.HasField(f):
            d = getattr(c, f)
            return max(0, int(d.seconds) * 1_000_000_000 + int(d.nanos))
    return 0


def convert(
    entry: accesslog_pb2.HTTPAccessLogEntry, node: str, enrich: Enrich, direction: str = "INGRESS"
) -> L7Record:
    """Both flows of one HTTP access log entry (raises only on a bug; callers count it as dropped).

    ``direction`` applies when the entry carries no ``nodemesh.direction`` tag."""
    c, req, resp = entry.common_properties, entry.request, entry.response
    tagged = c.custom_tags.get(DIRECTION_TAG, "")
    direction = tagged if tagged in ("INGRESS", "EGRESS") else direction
    src_ip, src_port = _addr(c.downstream_remote_address)
    client = _endpoint(enrich, src_ip)
    if c.HasField("upstream_remote_address"):
        dst_ip, dst_port = _addr(c.upstream_remote_address)
        server = _endpoint(enrich, dst_ip)
    else:  # answered by Envoy itself (no route, direct response, denied): the address it was sent to
        dst_ip, dst_port = _addr(c.downstream_local_address)
        server = _listener_side(_endpoint(enrich, dst_ip), direction)
    # an lb-l7 listener names its Service: like the L3/L4 flows of a translated connection, the
    # request carries it as destination_service, the response as source_service
    svc_ns, _, svc_name = c.custom_tags.get(SERVICE_TAG, "").partition("/")
    service = Service(name=svc_name, namespace=svc_ns) if svc_ns and svc_name else None
    method = _METHODS.get(req.request_method, "")
    protocol = _PROTOCOLS.get(entry.protocol_version, "")
    code = resp.response_code.value if resp.HasField("response_code") else 0
    latency = _latency_ns(c)
    url = _url(req)
    headers = [{"key": "X-Request-Id", "value": req.request_id[:128]}] if req.request_id else []
    tp = req.request_headers.get("traceparent", "")
    if tp:
        headers.append({"key": "traceparent", "value": tp[:128]})
    verdict = "DROPPED" if _denied(entry) else ("FORWARDED" if code else "ERROR")
    start_s, start_n = int(c.start_time.seconds), int(c.start_time.nanos)
    end = start_s * 1_000_000_000 + start_n + latency
    request = Flow(
        time=_time(start_s, start_n),
        uuid=str(uuid.uuid4()),
        verdict=verdict,
        ip=IP(source=src_ip, destination=dst_ip),
        l4=L4(tcp=TCP(source_port=src_port, destination_port=dst_port)),
        l7=L7(type="REQUEST", http=HTTP(method=method, url=url, protocol=protocol, headers=headers)),
        source=client,
        destination=server,
        traffic_direction=direction,
        is_reply=False,
        destination_service=service,
        Summary=f"{protocol} {method} {url}".strip(),
        Type="L7",
        node_name=node,
        event_type={"type": EVENT_TYPE_L7},
    )
    http = HTTP(code=code, method=method, url=url, protocol=protocol, headers=headers)
    response = Flow(
        time=_time(end // 1_000_000_000, end % 1_000_000_000),
        uuid=str(uuid.uuid4()),
        verdict=verdict,
        ip=IP(source=dst_ip, destination=src_ip),
        l4=L4(tcp=TCP(source_port=dst_port, destination_port=src_port)),
        l7=L7(type="RESPONSE", latency_ns=str(latency) if latency else "", http=http),
        source=server,
        destination=client,
        traffic_direction=direction,
        is_reply=True,
        source_service=service,
        Summary=f"{protocol} {code} {latency // 1_000_000}ms ({method} {url})".strip(),
        Type="L7",
        node_name=node,
        event_type={"type": EVENT_TYPE_L7},
    )
    return L7Record(request, response, method, protocol, code, latency, client, server, direction)
