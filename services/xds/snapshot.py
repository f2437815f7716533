"""Immutable xDS snapshots: the resources one Envoy should hold, by type URL, with content versions.

A :class:`Snapshot` is a plain value (no gRPC, no I/O). Every resource is serialized once, at
construction, deterministically; its version is a hash of those bytes, and a type's version is a hash
of its (name, version) pairs. So an identical state has an identical version — across translations and
across xds restarts — and never causes a push, and a Delta stream can tell exactly which resources
changed. :meth:`Snapshot.consistent` rejects a snapshot that names a resource it does not carry
(a listener's RDS route configuration, an EDS cluster's load assignment, a transport socket's SDS
secret), which Envoy would otherwise keep warming forever.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ORDER",
    "ROUTE",
    "SECRET",
    "InconsistentSnapshot",
    "Resource",
    "Snapshot",
    "resource_name",
]

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Push order within one snapshot change (xDS "eventual consistency considerations"): clusters before
#: their endpoints, both before the listeners that use them, listeners before their routes; secrets
#: are only requested by Envoy once a listener or cluster names them.
ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

_TYPES: dict[str, type[Message]] = {
    LISTENER: Listener,
    ROUTE: RouteConfiguration,
    CLUSTER: Cluster,
    ENDPOINT: ClusterLoadAssignment,
    SECRET: Secret,
}
_HCM = _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_DTLS = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_UTLS = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


class InconsistentSnapshot(ValueError):
    """A snapshot references resources it does not contain; ``missing`` lists (type URL, name)."""

    def __init__(self, missing: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"{t.rsplit('.', 1)[-1]} {n!r}" for t, n in missing[:10])
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        super().__init__(f"snapshot references missing resources: {shown}{more}")
        self.missing = missing


def resource_name(msg: Message) -> str:
    """The xDS name of a resource (ClusterLoadAssignment is named by its ``cluster_name``)."""
    if isinstance(msg, ClusterLoadAssignment):
        return str(msg.cluster_name)
    return str(getattr(msg, "name", ""))


def _type_url(msg: Message) -> str:
    return _PREFIX + msg.DESCRIPTOR.full_name


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class Resource:
    """One serialized resource: its name, content version and the ``Any`` Envoy receives."""

    __slots__ = ("_any", "message", "name", "payload", "type_url", "version")

    def __init__(self, type_url: str, name: str, message: Message) -> None:
        self.type_url = type_url
        self.name = name
        self.message = message
        self.payload = message.SerializeToString(deterministic=True)
        self.version = _digest(self.payload)
        self._any: AnyPb | None = None

    @property
    def any(self) -> AnyPb:
        if self._any is None:
            self._any = AnyPb(type_url=self.type_url, value=self.payload)
        return self._any


class Snapshot:
    """An immutable set of resources by type URL, with per-resource and per-type content versions."""

    __slots__ = ("_resources", "_versions")

    def __init__(self, resources: Mapping[str, Mapping[str, Message]] | None = None) -> None:
        built: dict[str, dict[str, Resource]] = {t: {} for t in ORDER}
        for type_url, by_name in (resources or {}).items():
            if type_url not in _TYPES:
                raise ValueError(f"unsupported resource type {type_url}")
            for name, msg in by_name.items():
                if _type_url(msg) != type_url:
                    raise ValueError(f"{name!r}: a {msg.DESCRIPTOR.full_name} filed under {type_url}")
                if resource_name(msg) != name:
                    raise ValueError(f"{type_url}: resource keyed {name!r} is named {resource_name(msg)!r}")
                built[type_url][name] = Resource(type_url, name, msg)
        self._init(built)

    def _init(self, built: dict[str, dict[str, Resource]]) -> None:
        self._resources = MappingProxyType({t: MappingProxyType(r) for t, r in built.items()})
        self._versions = MappingProxyType({t: _type_version(r) for t, r in built.items()})

    @classmethod
    def of(cls, messages: Iterable[Message]) -> Snapshot:
        """A snapshot from a flat list of resources, each filed under its own type and name."""
        grouped: dict[str, dict[str, Message]] = {}
        for m in messages:
            grouped.setdefault(_type_url(m), {})[resource_name(m)] = m
        return cls(grouped)

    def replace(self, type_url: str, upsert: Iterable[Message] = (), remove: Iterable[str] = ()) -> Snapshot:
        """A new snapshot with some resources of one type changed; the others are not reserialized."""
        built = {t: dict(r) for t, r in self._resources.items()}
        for m in upsert:
            if _type_url(m) != type_url:
                raise ValueError(f"a {m.DESCRIPTOR.full_name} is not a {type_url}")
            built[type_url][resource_name(m)] = Resource(type_url, resource_name(m), m)
        for name in remove:
            built[type_url].pop(name, None)
        new = Snapshot.__new__(Snapshot)
        new._init(built)
        return new

    # --- queries --------------------------------------------------------------------------------
    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._resources.get(type_url, MappingProxyType({}))

    def version(self, type_url: str) -> str:
        return self._versions.get(type_url, "")

    def resource_versions(self, type_url: str) -> dict[str, str]:
        return {n: r.version for n, r in self.resources(type_url).items()}

    def __iter__(self) -> Iterator[str]:
        return iter(ORDER)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and dict(self._versions) == dict(other._versions)

    def __hash__(self) -> int:
        return hash(tuple(self._versions.items()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{t.rsplit('.', 1)[-1]}={len(r)}" for t, r in self._resources.items() if r)
        return f"Snapshot({counts})"

    # --- consistency ----------------------------------------------------------------------------
    def references(self) -> set[tuple[str, str]]:
        """Every (type URL, name) this snapshot's listeners and clusters name through RDS/EDS/SDS."""
        refs: set[tuple[str, str]] = set()
        for res in self.resources(LISTENER).values():
            _listener_refs(res.message, refs)
        for res in self.resources(CLUSTER).values():
            _cluster_refs(res.message, refs)
        return refs

    def missing(self) -> list[tuple[str, str]]:
        return sorted((t, n) for t, n in self.references() if n not in self.resources(t))

    def dangling(self) -> dict[tuple[str, str], list[tuple[str, str]]]:
        """Each listener or cluster that names an absent resource → the absent (type URL, name)s."""
        out: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for type_url, collect in ((LISTENER, _listener_refs), (CLUSTER, _cluster_refs)):
            for name, res in self.resources(type_url).items():
                refs: set[tuple[str, str]] = set()
                collect(res.message, refs)
                miss = sorted((t, n) for t, n in refs if n not in self.resources(t))
                if miss:
                    out[(type_url, name)] = miss
        return out

    def without_dangling(self) -> tuple[Snapshot, dict[tuple[str, str], list[tuple[str, str]]]]:
        """A consistent snapshot: the listeners and clusters naming absent resources are left out."""
        bad = self.dangling()
        snap = self
        for type_url in (LISTENER, CLUSTER):
            names = [n for t, n in bad if t == type_url]
            if names:
                snap = snap.replace(type_url, remove=names)
        return snap, bad

    def consistent(self) -> None:
        """Raise :class:`InconsistentSnapshot` if a referenced route, endpoint or secret is absent."""
        missing = self.missing()
        if missing:
            raise InconsistentSnapshot(missing)


def _type_version(resources: Mapping[str, Resource]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(resources[name].version.encode())
        h.update(b"\0")
    return h.hexdigest()


def _listener_refs(listener: Listener, refs: set[tuple[str, str]]) -> None:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        if chain.HasField("transport_socket"):
            _socket_refs(chain.transport_socket, refs)
        for f in chain.filters:
            if f.HasField("typed_config") and f.typed_config.type_url == _HCM:
                hcm = HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                if hcm.HasField("rds"):
                    refs.add((ROUTE, hcm.rds.route_config_name))


def _cluster_refs(cluster: Cluster, refs: set[tuple[str, str]]) -> None:
    if cluster.type == Cluster.EDS and not cluster.HasField("load_assignment"):
        refs.add((ENDPOINT, cluster.eds_cluster_config.service_name or cluster.name))
    if cluster.HasField("transport_socket"):
        _socket_refs(cluster.transport_socket, refs)
    for m in cluster.transport_socket_matches:
        _socket_refs(m.transport_socket, refs)


def _socket_refs(sock: TransportSocket, refs: set[tuple[str, str]]) -> None:
    if not sock.HasField("typed_config"):
        return
    common: CommonTlsContext
    if sock.typed_config.type_url == _DTLS:
        d = DownstreamTlsContext()
        sock.typed_config.Unpack(d)
        common = d.common_tls_context
    elif sock.typed_config.type_url == _UTLS:
        u = UpstreamTlsContext()
        sock.typed_config.Unpack(u)
        common = u.common_tls_context
    else:
        return
    configs = list(common.tls_certificate_sds_secret_configs)
    if common.HasField("validation_context_sds_secret_config"):
        configs.append(common.validation_context_sds_secret_config)
    if common.HasField("combined_validation_context"):
        cvc = common.combined_validation_context
        if cvc.HasField("validation_context_sds_secret_config"):
            configs.append(cvc.validation_context_sds_secret_config)
    for sds in configs:
        # Only secrets fetched over ADS are ours to serve (a path- or cluster-sourced SDS is not).
        if not sds.HasField("sds_config") or sds.sds_config.HasField("ads"):
            refs.add((SECRET, sds.name))
