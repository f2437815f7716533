"""Security identities, the ipcache, nodes and SVIDs (identity service ↔ datapath, authd, xds).

KV layouts (bucket → key → value):
    identities: ``id.<n>`` → Identity;  ``labels.<sha256 of canonical labels>`` → IdentityRef
    ipcache:    ``<ip with '.'/':' as '-'>`` → IPCacheEntry
    nodes:      ``<node>`` → NodeInfo
    trust:      ``bundle`` → TrustBundle
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "AllocateReply",
    "AllocateRequest",
    "CaRotateReply",
    "CaRotateRequest",
    "IPCacheEntry",
    "IPCacheEvent",
    "Identity",
    "IdentityEvent",
    "IdentityRef",
    "NodeInfo",
    "ReleaseRequest",
    "SvidReply",
    "SvidRequest",
    "TrustBundle",
]


class Identity(msgspec.Struct, kw_only=True):
    """A numeric security identity and the labels it stands for.

    ``labels`` are Cilium-style ``source:key=value`` strings, sorted (e.g. ``k8s:app=web``,
    ``k8s:io.kubernetes.pod.namespace=default``); reserved identities use ``reserved:<name>``.
    """

    id: int
    labels: list[str]
    reserved: bool = False
    # endpoint refs: "<node>/<namespace>/<pod>" currently using this identity
    refs: list[str] = msgspec.field(default_factory=list)
    unused_since: float = 0.0  # unix time the last ref went, 0 while referenced
    created: float = 0.0


class IdentityRef(msgspec.Struct, kw_only=True):
    """labels-hash → id, the create-if-absent lock of allocation."""

    id: int


class IdentityEvent(msgspec.Struct, kw_only=True):
    type: Literal["upsert", "delete"]
    identity: Identity


class IPCacheEntry(msgspec.Struct, kw_only=True):
    """What an IP is: its identity and where it lives."""

    ip: str
    identity: int
    node: str = ""  # node hosting the endpoint ("" for world/CIDR entries)
    namespace: str = ""
    pod: str = ""
    prefix_len: int = 32  # 32 for an endpoint, less for a CIDR entry


class IPCacheEvent(msgspec.Struct, kw_only=True):
    type: Literal["upsert", "delete"]
    entry: IPCacheEntry
    revision: int = 0  # KV revision, increasing


class NodeInfo(msgspec.Struct, kw_only=True):
    """A node as every service sees it."""

    name: str
    address: str  # node IP (authd listens here on auth_port)
    pod_cidr: str
    auth_port: int = 4250
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class SvidRequest(msgspec.Struct, kw_only=True):
    """A CSR for one identity hosted on the requesting node (PEM, PKCS#10)."""

    identity: int
    csr_pem: str
    node: str = ""  # informational; the subject (svid.sign.<node>) is what is trusted


class SvidReply(msgspec.Struct, kw_only=True):
    """An X.509-SVID chain (leaf first, PEM) plus the trust bundle it verifies against."""

    identity: int
    spiffe_id: str
    cert_chain_pem: str
    bundle_pem: str
    not_after: float


class TrustBundle(msgspec.Struct, kw_only=True):
    trust_domain: str
    roots_pem: list[str]  # every CA root currently trusted; the signing root first
    revision: int = 0  # increases with every change of roots_pem
    # SHA-256 (hex, of the DER) of each *retired* root → unix time it leaves the bundle (when every
    # SVID it signed has expired); the signing root is not listed.
    keep_until: dict[str, float] = msgspec.field(default_factory=dict)


class AllocateRequest(msgspec.Struct, kw_only=True):
    """``identity.allocate``: the identity of a label set, taking a reference for ``endpoint``.

    ``labels`` are ``source:key=value`` strings (e.g. ``k8s:app=web``). ``endpoint`` names a
    workload outside Kubernetes and must start with ``ext:`` (pod references are the identity
    service's own); empty only looks up / creates the identity (collected after the grace if unused).
    """

    labels: list[str]
    endpoint: str = ""


class AllocateReply(msgspec.Struct, kw_only=True):
    identity: Identity
    created: bool = False  # this request allocated the number


class ReleaseRequest(msgspec.Struct, kw_only=True):
    """``identity.release``: drop ``endpoint``'s reference on ``identity``."""

    identity: int
    endpoint: str


class CaRotateRequest(msgspec.Struct, kw_only=True):
    """``identity.ca.rotate``: start signing with a new CA key; the old root stays trusted."""

    reason: str = ""


class CaRotateReply(msgspec.Struct, kw_only=True):
    bundle: TrustBundle
    new_root_fingerprint: str  # SHA-256 of the new root certificate (hex)
    old_root_kept_until: float  # unix time the previous root leaves the bundle
