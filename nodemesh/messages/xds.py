"""xDS acknowledgements (xds → anyone), so status can say a config is applied, not just sent."""

from __future__ import annotations

import msgspec

__all__ = ["NodeXdsStatus", "ResourceXdsStatus", "XdsAck", "XdsStatusReply", "XdsStatusRequest"]


class XdsAck(msgspec.Struct, kw_only=True):
    """One ACK or NACK from one Envoy for one resource type (published on ``xds.ack.<node>``)."""

    node: str
    type_url: str
    version: str
    ack: bool
    error: str = ""  # the NACK's error_detail.message
    nonce: str = ""
    ts: float = 0.0
    # Added for multi-replica status: which xds replica's stream carried it, and for listeners the
    # content version of each resource in the answered response, so every replica can tell which
    # listener versions each node's Envoy applied (Gateway Programmed), whichever replica serves it.
    replica: str = ""
    resources: dict[str, str] = msgspec.field(default_factory=dict)  # name → content version
    removed: list[str] = msgspec.field(default_factory=list)  # names the response removed (Delta)
    full_state: bool = False  # SotW LDS/CDS: names absent from ``resources`` were removed
    delta: bool = False


class XdsStatusRequest(msgspec.Struct, kw_only=True):
    """Ask xds (``xds.status``) what each node's Envoy runs: applied, pending or rejected resources."""

    node: str = ""  # "" = every node
    problems_only: bool = True  # only pending and rejected resources


class ResourceXdsStatus(msgspec.Struct, kw_only=True):
    type_url: str
    name: str
    state: str  # applied | pending | rejected
    version: str = ""  # the content version xds serves now
    applied: str = ""  # the content version Envoy runs ("" = none)
    error: str = ""  # Envoy's NACK reason when rejected


class NodeXdsStatus(msgspec.Struct, kw_only=True):
    node: str
    streams: int = 0  # open ADS streams of this node's Envoy on the answering replica
    resources: list[ResourceXdsStatus] = msgspec.field(default_factory=list)
    counts: dict[str, int] = msgspec.field(default_factory=dict)  # state → number of resources


class XdsStatusReply(msgspec.Struct, kw_only=True):
    """The answering replica's view (listener state is shared between replicas; other types are
    known for the Envoys it serves)."""

    replica: str
    nodes: list[NodeXdsStatus] = msgspec.field(default_factory=list)
