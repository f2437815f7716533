"""Mutual authentication signals and verdicts (datapath ↔ authd) and auth events (for users)."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["AUTH_TYPE_SPIRE", "AuthEvent", "AuthKey", "AuthRequired", "AuthVerdict"]

#: Cilium's auth type number for "spire" mutual auth (policy ``authentication.mode: required``).
AUTH_TYPE_SPIRE = 1
AUTH_TYPE_ALWAYS_FAIL = 2


class AuthKey(msgspec.Struct, frozen=True, kw_only=True):
    """The auth map key, as Cilium's: (local identity, remote identity, remote node, auth type)."""

    local_identity: int
    remote_identity: int
    remote_node: str  # node name; the datapath maps it to its node id for the BPF key
    auth_type: int = AUTH_TYPE_SPIRE


class AuthRequired(msgspec.Struct, kw_only=True):
    """Datapath → authd on ``auth.required.<node>``: a packet was dropped for want of this entry."""

    key: AuthKey
    remote_ip: str = ""
    ts: float = 0.0


class AuthVerdict(msgspec.Struct, kw_only=True):
    """authd → datapath on ``auth.granted.<node>`` / ``auth.revoked.<node>``."""

    key: AuthKey
    expires: float = 0.0  # unix seconds; the datapath stores it as the entry's expiry


class AuthEvent(msgspec.Struct, kw_only=True):
    """authd → anyone on ``auth.events.<node>``: what happened to an auth entry, and why."""

    type: Literal["requested", "succeeded", "failed", "expired", "removed", "skipped"]
    key: AuthKey
    node: str
    reason: str = ""
    expires: float = 0.0
    latency_ms: float = 0.0
    proactive: bool = False
    ts: float = 0.0
