"""authd's auth entries and the pure decisions about them: which keys this node needs, which entries
a change invalidates, when to re-authenticate. No I/O; :mod:`services.authd.manager` acts on it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from nodemesh.labels import MIN_ALLOCATED
from nodemesh.messages.auth import AuthEntry, AuthKey
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from services.authd.policy import Pair

__all__ = ["Entry", "Topology", "desired_keys", "invalid_reason", "is_primary", "is_reserved", "renew_at"]


def is_reserved(identity: int, identities: Mapping[int, Identity]) -> bool:
    ident = identities.get(identity)
    return identity < MIN_ALLOCATED or (ident is not None and ident.reserved)


class Topology:
    """Where identities run, as the ipcache and nodes buckets say. Immutable once built, so the
    handshake threads can read it while the event loop builds the next one."""

    def __init__(self, me: str, ipcache: Iterable[IPCacheEntry], nodes: Mapping[str, NodeInfo]) -> None:
        self.me = me
        self.nodes = dict(nodes)
        self.node_by_address = {n.address: name for name, n in self.nodes.items() if n.address}
        id_nodes: dict[int, set[str]] = {}
        for e in ipcache:
            if e.node and e.prefix_len in (32, 128):
                id_nodes.setdefault(e.identity, set()).add(e.node)
        self.id_nodes = {i: frozenset(ns) for i, ns in id_nodes.items()}
        self.hosted = frozenset(i for i, ns in self.id_nodes.items() if me in ns)

    def nodes_of(self, identity: int) -> frozenset[str]:
        return self.id_nodes.get(identity, frozenset())


def desired_keys(
    pairs: Iterable[Pair], topo: Topology, identities: Mapping[int, Identity]
) -> tuple[set[AuthKey], set[AuthKey]]:
    """(keys to authenticate, keys to skip as reserved) for the pairs policy requires, restricted to
    local identities hosted here and remote identities with an endpoint on a known node."""
    want: set[AuthKey] = set()
    skip: set[AuthKey] = set()
    for local, remote, auth_type in pairs:
        if local not in topo.hosted or is_reserved(local, identities):
            continue
        if is_reserved(remote, identities):
            skip.add(
                AuthKey(local_identity=local, remote_identity=remote, remote_node="", auth_type=auth_type)
            )
            continue
        for node in topo.nodes_of(remote):
            if node in topo.nodes:
                want.add(
                    AuthKey(
                        local_identity=local, remote_identity=remote, remote_node=node, auth_type=auth_type
                    )
                )
    return want, skip


def invalid_reason(key: AuthKey, topo: Topology, identities: Mapping[int, Identity]) -> str:
    """Why an entry can no longer stand ("" if it can): its identity, endpoint or node went away."""
    if key.local_identity not in identities or key.remote_identity not in identities:
        return "identity-removed"
    if key.local_identity not in topo.hosted:
        return "endpoint-removed"
    if key.remote_node not in topo.nodes:
        return "node-removed"
    if key.remote_node not in topo.nodes_of(key.remote_identity):
        return "endpoint-removed"
    return ""


def is_primary(me: str, key: AuthKey) -> bool:
    """Of the two nodes of a pair, the one that renews first (the other renews later and is usually
    refreshed by the first one's handshake as responder), so a pair needs one handshake, not two."""
    return (me, key.local_identity) <= (key.remote_node, key.remote_identity)


def renew_at(granted: float, expires: float, primary: bool, fraction: float) -> float:
    life = max(0.0, expires - granted)
    frac = fraction if primary else fraction + (1.0 - fraction) / 2
    return granted + life * frac


class Entry:
    """One auth entry's state."""

    __slots__ = (
        "due",
        "expires",
        "failures",
        "granted",
        "handshakes",
        "key",
        "last_error",
        "last_success",
        "published",
        "reactive",
        "required",
        "retries",
        "state",
        "via",
    )

    def __init__(self, key: AuthKey) -> None:
        self.key = key
        self.state = "pending"
        self.expires = 0.0
        self.granted = 0.0
        self.last_error = ""
        self.last_success = 0.0
        self.required = False  # policy requires it (proactive)
        self.reactive = False  # the datapath asked for it
        self.via = ""
        self.handshakes = 0
        self.failures = 0
        self.retries = 0
        self.published = False  # a granted verdict is out (so removal must revoke it)
        self.due = 0.0  # next handshake (0 = none scheduled)

    def valid(self, margin: float = 0.0, now: float | None = None) -> bool:
        return self.state == "authenticated" and self.expires > (now or time.time()) + margin

    def view(self, node: str) -> AuthEntry:
        return AuthEntry(
            key=self.key,
            node=node,
            state=self.state,  # type: ignore[arg-type]
            expires=self.expires,
            last_error=self.last_error,
            last_success=self.last_success,
            proactive=self.required,
            reactive=self.reactive,
            via=self.via,
            handshakes=self.handshakes,
            failures=self.failures,
        )
