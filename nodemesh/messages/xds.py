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
