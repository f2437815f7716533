"""xDS acknowledgements (xds → anyone), so status can say a config is applied, not just sent."""

from __future__ import annotations

import msgspec

__all__ = ["XdsAck"]


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
