"""Flows, shaped like Hubble's ``flow.Flow`` so ``-o json`` output works with Hubble tooling.

A Flow encodes to the protojson form of Hubble's ``flow.Flow`` (api/v1/flow/flow.proto, proto field
names): field names follow it (``IP``, ``l4``, ``source``, ``traffic_direction``, …) via msgspec
renames; enums are the Hubble enum names as strings (``FORWARDED``, ``DROPPED``, ``INGRESS``); a
uint64 (``latency_ns``) is a decimal string; ``is_reply`` is a ``BoolValue`` (present when known, so
``false`` is printed); defaults are omitted as protojson omits them. Nothing here is a field Hubble's
definitions lack: tests/hubbleapi decodes every kind of flow with those definitions in strict mode.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "HTTP",
    "IP",
    "L4",
    "L7",
    "TCP",
    "UDP",
    "Endpoint",
    "Flow",
    "ICMPv4",
    "Service",
    "TCPFlags",
    "Workload",
]


class Workload(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Hubble's ``flow.Workload``: the controller a pod belongs to (``Deployment``, ``StatefulSet``)."""

    name: str = ""
    kind: str = ""


class Endpoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    ID: int = 0
    identity: int = 0
    namespace: str = ""
    labels: list[str] = msgspec.field(default_factory=list)
    pod_name: str = ""
    workloads: list[Workload] = msgspec.field(default_factory=list)


class Service(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Hubble's ``flow.Service``: the Kubernetes Service a flow's side belongs to."""

    name: str = ""
    namespace: str = ""


class IP(msgspec.Struct, kw_only=True):
    # not omit_defaults: ipVersion IPv4 is printed, as protojson prints a non-zero enum
    source: str = ""
    destination: str = ""
    ipVersion: str = "IPv4"


class TCPFlags(msgspec.Struct, kw_only=True, omit_defaults=True):
    FIN: bool = False
    SYN: bool = False
    RST: bool = False
    PSH: bool = False
    ACK: bool = False
    URG: bool = False


class TCP(msgspec.Struct, kw_only=True, omit_defaults=True):
    source_port: int = 0
    destination_port: int = 0
    flags: TCPFlags | None = None


class UDP(msgspec.Struct, kw_only=True, omit_defaults=True):
    source_port: int = 0
    destination_port: int = 0


class ICMPv4(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: int = 0
    code: int = 0


class L4(msgspec.Struct, kw_only=True, omit_defaults=True):
    # Attribute names are lower-case so they do not shadow the classes; the wire names are Hubble's.
    tcp: TCP | None = msgspec.field(default=None, name="TCP")
    udp: UDP | None = msgspec.field(default=None, name="UDP")
    icmpv4: ICMPv4 | None = msgspec.field(default=None, name="ICMPv4")
    sctp: UDP | None = msgspec.field(default=None, name="SCTP")


class HTTP(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int = 0
    method: str = ""
    url: str = ""
    protocol: str = ""
    headers: list[dict[str, str]] = msgspec.field(default_factory=list)


class L7(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str = ""  # REQUEST | RESPONSE | SAMPLE
    latency_ns: str = ""  # uint64 in Hubble's definitions: protojson prints it as a decimal string
    http: HTTP | None = None


class Flow(msgspec.Struct, kw_only=True, omit_defaults=True):
    time: str  # RFC 3339 with nanoseconds, as Hubble prints it
    verdict: str  # FORWARDED | DROPPED | AUDIT | REDIRECTED | ERROR
    uuid: str = ""  # unique per flow (Hubble's uuid), set where the flow is made
    ip: IP | None = msgspec.field(default=None, name="IP")
    l4: L4 | None = None
    l7: L7 | None = None
    source: Endpoint | None = None
    destination: Endpoint | None = None
    Type: str = ""  # L3_L4 | L7 | SOCK; set by every producer ("" is UNKNOWN_TYPE, omitted)
    node_name: str = ""
    event_type: dict[str, int] = msgspec.field(default_factory=dict)  # {"type": 1 drop | 4 trace | 5 pv}
    traffic_direction: str = ""  # INGRESS | EGRESS
    drop_reason: int = 0
    drop_reason_desc: str = ""  # POLICY_DENIED | AUTH_REQUIRED | POLICY_DENY | …
    is_reply: bool | None = None  # BoolValue: None = unknown (omitted), False is printed
    auth_type: str = ""  # DISABLED | SPIRE | TEST_ALWAYS_FAIL
    policy_match_type: int = 0
    trace_observation_point: str = ""  # traces only: FROM_ENDPOINT | TO_ENDPOINT | TO_PROXY | …
    Summary: str = ""
    # the Service whose backend the source answers as (replies) / the destination is (requests)
    source_service: Service | None = None
    destination_service: Service | None = None
