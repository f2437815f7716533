"""Resolve policies from scratch: every endpoint's policy map and the CIDR identities.

``resolve`` feeds everything to a fresh :class:`~nodemesh.policy.incremental.PolicyEngine`,
so a full resolve and a sequence of incremental changes share one code path and must agree (a test
checks that they do).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from nodemesh.policy.incremental import PolicyEngine
from nodemesh.policy.model import AuthPair, Endpoint, EndpointPolicy, PolicyRef, ProxyPorts
from nodemesh.policy.rules import ParseError

__all__ = ["Resolved", "required_auth_pairs", "resolve"]


class Resolved(msgspec.Struct, kw_only=True):
    """``policies``: endpoint key → its map. ``cidr_identities``: CIDR → local identity (≥ 2**24),
    for the ipcache LPM. ``errors``: invalid policies → why (they are not applied)."""

    policies: dict[str, EndpointPolicy]
    cidr_identities: dict[str, int]
    errors: dict[PolicyRef, tuple[ParseError, ...]]


def resolve(
    policies: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Endpoint],
    identities: Mapping[int, Sequence[str]],
    *,
    proxy_ports: ProxyPorts | None = None,
    allow_localhost: bool = True,
    cidr_identities: Mapping[str, int] | None = None,
) -> Resolved:
    """``identities``: id → labels (``k8s:app=web``, ``k8s:io.kubernetes.pod.namespace=default``,
    ``reserved:world``); reserved ids 1..11 get their ``reserved:`` labels when not given."""
    eng = PolicyEngine(
        proxy_ports=proxy_ports, allow_localhost=allow_localhost, cidr_identities=cidr_identities
    )
    for ident, labels in identities.items():
        eng.upsert_identity(ident, labels)
    for ep in endpoints:
        eng.upsert_endpoint(ep)
    for obj in policies:
        eng.upsert_policy(obj)
    return Resolved(policies=eng.policies(), cidr_identities=eng.cidr_identities(), errors=eng.errors())


def required_auth_pairs(policies: Iterable[Mapping[str, Any]], identities: Iterable[Any]) -> set[AuthPair]:
    """Every (local, remote, auth type) the policies require authentication for, cluster-wide:
    each workload identity is resolved as if an endpoint had it. ``identities`` is a mapping
    id → labels or an iterable of objects with ``id`` and ``labels`` (``messages.identity.Identity``).
    authd uses this to authenticate ahead of traffic."""
    if isinstance(identities, Mapping):
        ids = {int(k): list(v) for k, v in identities.items()}
    else:
        ids = {int(i.id): list(i.labels) for i in identities}
    eng = PolicyEngine()
    for ident, labels in ids.items():
        eng.upsert_identity(ident, labels)
    for obj in policies:
        eng.upsert_policy(obj)
    for ident in ids:
        if ident >= 256:
            eng.upsert_endpoint(Endpoint(key=f"identity:{ident}", identity=ident))
    return eng.required_auth_pairs()
