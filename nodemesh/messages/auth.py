"""Mutual authentication signals and verdicts (datapath ↔ authd), auth events and state (for users).

Subjects (see :mod:`nodemesh.subjects`): ``auth.required.<node>`` (AuthRequired, datapath → authd),
``auth.granted.<node>`` / ``auth.revoked.<node>`` (AuthVerdict, authd → datapath),
``auth.events.<node>`` (AuthEvent, authd → anyone), ``auth.list.<node>`` (AuthListRequest →
AuthListReply, request/reply; the datapath may also use it to re-seed its auth map after a restart).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "AUTH_TYPE_ALWAYS_FAIL",
    "AUTH_TYPE_NAMES",
    "AUTH_TYPE_SPIRE",
    "AuthEntry",
    "AuthEvent",
    "AuthKey",
    "AuthListReply",
    "AuthListRequest",
    "AuthRequired",
    "AuthVerdict",
]

#: Cilium's auth type number for "spire" mutual auth (policy ``authentication.mode: required``).
AUTH_TYPE_SPIRE = 1
#: Cilium's ``test-always-fail`` mode: every handshake fails (for tests and CI).
AUTH_TYPE_ALWAYS_FAIL = 2
AUTH_TYPE_NAMES = {0: "disabled", AUTH_TYPE_SPIRE: "spire", AUTH_TYPE_ALWAYS_FAIL: "test-always-fail"}


class AuthKey(msgspec.Struct, frozen=True, kw_only=True, order=True):
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
    """authd → anyone on ``auth.events.<node>``: what happened to an auth entry, and why.

    ``reason`` is a short stable code (the metric label: ``expired``, ``wrong-san``, ``not-on-node``,
    ``peer-refused``, ``policy``, …); ``detail`` is free text for humans.
    """

    type: Literal["requested", "succeeded", "failed", "expired", "removed", "skipped"]
    key: AuthKey
    node: str
    reason: str = ""
    expires: float = 0.0
    latency_ms: float = 0.0
    proactive: bool = False
    ts: float = 0.0
    detail: str = ""
    role: str = ""  # "initiator" | "responder" | "" (not a handshake)


class AuthEntry(msgspec.Struct, kw_only=True):
    """One auth entry as ``nodemesh auth list`` shows it."""

    key: AuthKey
    node: str  # the node whose auth map holds (or would hold) the entry
    state: Literal["pending", "authenticated", "failed", "expired", "skipped"]
    expires: float = 0.0
    last_error: str = ""
    last_success: float = 0.0
    proactive: bool = False  # required by policy (authenticated ahead of traffic)
    reactive: bool = False  # signalled by the datapath
    via: str = ""  # "initiator" | "responder": how the current verdict was obtained
    handshakes: int = 0
    failures: int = 0


class AuthListRequest(msgspec.Struct, kw_only=True):
    """Request on ``auth.list.<node>``; an empty filter lists everything."""

    state: str = ""


class AuthListReply(msgspec.Struct, kw_only=True):
    node: str
    entries: list[AuthEntry] = msgspec.field(default_factory=list)
    hosted_identities: list[int] = msgspec.field(default_factory=list)  # identities with a local SVID
    trust_domain: str = ""
    mode: str = ""
    pending: int = 0
