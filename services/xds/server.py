"""The ADS gRPC server (State-of-the-World and Delta) over a :class:`SnapshotCache`; the only gRPC module.

Protocol rules it keeps (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):

- Nonces are per stream and strictly increasing. A SotW request whose ``response_nonce`` is not the
  last nonce sent for its type is stale and ignored entirely (it may still carry an old NACK).
- A NACK is a request carrying ``error_detail`` (Envoy PR #14841), not a version mismatch. The rejected
  version is *parked*: it is not sent again on that stream until the snapshot's version for that type
  changes, so a bad config never loops (go-control-plane #582/#794). Envoy keeps its last good config.
- SotW flow control: at most one unanswered response per type; the next goes out after the ACK/NACK.
- Wildcard: LDS/CDS with no names (or ``*``) get every resource; RDS/EDS/SDS only the names asked for.
- Order within one snapshot change: CDS, EDS, LDS, RDS, SDS (:data:`snapshot.ORDER`); Delta sends all
  additions/updates in that order first and the removals after them (make before break).
- Delta sends only resources whose content version differs from what the client holds (its
  ``initial_resource_versions`` on reconnect, then what was sent), and ``removed_resources``.

Every response is reported through :class:`Hooks` (``on_sent``), every ACK/NACK too (``on_ack``), so
the app can publish them and track what each node's Envoy applied.

Authentication (docs/security.md): with :class:`ServerTls` the server speaks only mTLS and requires a
client certificate from the xDS CA (nodemesh/xdspki.py); the ``node.id`` of a stream's first request
must be the node its certificate names, or the stream is refused with PERMISSION_DENIED. A Secret is
served only to a node whose own listeners or clusters reference it (asking for another name gets
nothing), so a node never learns a key it does not terminate TLS with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from envoy.service.discovery.v3.discovery_pb2 import Resource as ResourcePb

from nodemesh.xdspki import node_from_uris
from services.xds.acks import AckEvent, Sent
from services.xds.cache import SnapshotCache, Watch
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, SECRET, Resource, Snapshot

__all__ = ["AdsServer", "Hooks", "ServerTls", "peer_node"]

log = logging.getLogger("nodemesh.xds.server")
WILDCARD_TYPES = (LISTENER, CLUSTER)
REMOVAL_ORDER = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


def _noop(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """Observers of the protocol; each is called synchronously from the event loop."""

    on_sent: Callable[[Sent], None] = _noop
    on_ack: Callable[[AckEvent], None] = _noop
    on_stream: Callable[[str, bool, bool], None] = _noop  # (node, opened, delta)
    on_stale: Callable[[str, str], None] = _noop  # (node, type_url)
    #: (node, type_url): a stream's first request for a type says the client holds none of it (a new
    #: or restarted Envoy), so what that node had applied before is gone.
    on_fresh: Callable[[str, str], None] = _noop


@dataclass(frozen=True)
class ServerTls:
    """xds's serving certificate and key, and the CA whose node certificates it accepts (PEM)."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @classmethod
    def from_dir(cls, directory: str) -> ServerTls:
        """``tls.crt``, ``tls.key`` and ``ca.crt`` of a directory (a mounted Secret, or the local PKI)."""
        d = Path(directory)
        try:
            return cls(
                (d / "tls.crt").read_bytes(), (d / "tls.key").read_bytes(), (d / "ca.crt").read_bytes()
            )
        except OSError as e:
            raise ValueError(f"xds TLS directory {directory}: {e}") from e


def peer_node(context: Any) -> str | None:
    """The node an mTLS peer's verified certificate names (None without one, or naming none)."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    for pem in auth.get("x509_pem_cert", []):
        try:
            cert = x509.load_pem_x509_certificate(pem)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            return None
        return node_from_uris([str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)])
    return None


def _referenced_secrets(snap: Snapshot) -> frozenset[str]:
    return frozenset(n for t, n in snap.references() if t == SECRET)


@dataclass
class _SotwType:
    wildcard: bool
    names: set[str]
    client_version: str = ""
    sent_version: str = ""
    sent_names: set[str] = field(default_factory=set)
    last_nonce: str = ""
    last_sent: Sent | None = None
    parked: str = ""
    pending: bool = True
    answered: str = ""  # the nonce whose ACK/NACK was recorded


@dataclass
class _DeltaType:
    wildcard: bool
    names: set[str]
    known: dict[str, str]
    inflight: dict[str, Sent] = field(default_factory=dict)
    parked: str = ""


class _Stream:
    """State shared by both stream kinds: node, watch, nonce counter and the outgoing queue."""

    delta = False

    def __init__(self, server: AdsServer, context: Any = None) -> None:
        self.server = server
        self.node = ""
        self.watch: Watch | None = None
        self._nonce = 0
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        #: The node the client certificate names ("" without TLS, None when TLS gave no node name).
        self.peer: str | None = "" if server.tls is None or context is None else peer_node(context)
        self._secrets_of: tuple[Snapshot | None, frozenset[str]] = (None, frozenset())

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def bind(self, node_id: str) -> None:
        if self.node:
            return
        if not node_id:
            raise ValueError("the first request on a stream must carry node.id")
        if self.peer is None:
            raise PermissionError("the client certificate names no node")
        if self.peer and node_id != self.peer:
            raise PermissionError(f"node.id {node_id!r} is not the node of the client certificate")
        self.node = node_id
        self.watch = self.server.cache.watch(node_id)
        self.server.hooks.on_stream(node_id, True, self.delta)
        self._tasks.append(asyncio.create_task(self._follow(), name=f"xds-watch:{node_id}"))

    async def _follow(self) -> None:
        assert self.watch is not None
        while True:
            await self.watch.changed()
            self.push()

    def push(self) -> None:
        """Answer a snapshot change, type by type in :data:`ORDER`."""
        for t in ORDER:
            self.respond(t)

    def respond(self, type_url: str) -> None:
        raise NotImplementedError

    def servable(self, snap: Snapshot, type_url: str) -> Mapping[str, Resource]:
        """``snap``'s resources of a type this node may receive: Secrets only where referenced."""
        res = snap.resources(type_url)
        if type_url != SECRET:
            return res
        cached, names = self._secrets_of
        if cached is not snap:
            names = _referenced_secrets(snap)
            self._secrets_of = (snap, names)
        return {n: r for n, r in res.items() if n in names}

    def handle(self, req: Any) -> None:
        raise NotImplementedError

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                self.handle(req)
        except Exception as e:
            await self.out.put(e)
            return
        await self.out.put(None)

    async def run(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        self._tasks.append(asyncio.create_task(self._read(requests), name="xds-read"))
        try:
            while True:
                item = await self.out.get()
                if item is None:
                    return
                if isinstance(item, PermissionError):
                    log.warning("refused an ADS stream: %s", item)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(item))
                if isinstance(item, ValueError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item))
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for t in self._tasks:
                t.cancel()
            if self.watch is not None:
                self.watch.close()
                self.server.hooks.on_stream(self.node, False, self.delta)


class _SotwStream(_Stream):
    def __init__(self, server: AdsServer, context: Any = None) -> None:
        super().__init__(server, context)
        self.types: dict[str, _SotwType] = {}

    def handle(self, req: DiscoveryRequest) -> None:
        self.bind(req.node.id)
        t = req.type_url
        if t not in ORDER:
            log.debug("ignoring request for unserved type %s from %s", t, self.node)
            return
        ts = self.types.get(t)
        if ts is not None and ts.last_nonce and req.response_nonce != ts.last_nonce:
            log.debug(
                "stale nonce %r (last %r) for %s from %s", req.response_nonce, ts.last_nonce, t, self.node
            )
            self.server.hooks.on_stale(self.node, t)
            return
        names = set(req.resource_names)
        wildcard = "*" in names or (t in WILDCARD_TYPES and not names)
        if ts is None:
            ts = self.types[t] = _SotwType(wildcard, names - {"*"})
            if req.version_info:
                # A reconnecting Envoy (xds restarted) holds what it asks for at that version.
                ts.sent_names = set(ts.names)
            else:
                self.server.hooks.on_fresh(self.node, t)
        else:
            ts.wildcard, ts.names = wildcard, names - {"*"}
            # A name the client dropped must be sent again if it comes back (a re-added cluster's
            # endpoints), even at an unchanged version.
            ts.sent_names &= ts.names
        if ts.last_sent is not None and req.response_nonce == ts.last_nonce and ts.answered != ts.last_nonce:
            ts.answered = ts.last_nonce  # later requests with this nonce only change subscriptions
            nack = req.HasField("error_detail")
            ev = AckEvent(ts.last_sent, ack=not nack, error=req.error_detail.message if nack else "")
            if nack:
                ts.parked = ts.sent_version
                log.warning(
                    "NACK from %s for %s version %s: %s",
                    self.node,
                    t,
                    ts.sent_version,
                    ev.error,
                    extra={"node": self.node, "type_url": t, "version": ts.sent_version, "error": ev.error},
                )
            self.server.hooks.on_ack(ev)
        ts.client_version = req.version_info
        ts.pending = True
        self.respond(t)

    def respond(self, type_url: str) -> None:
        ts = self.types.get(type_url)
        snap = self.watch.snapshot() if self.watch is not None else None
        if ts is None or snap is None or not ts.pending:
            return
        v = snap.version(type_url)
        if v == ts.parked:
            return  # Envoy rejected exactly this; wait for the snapshot to change
        res = self.servable(snap, type_url)
        selected = res if ts.wildcard else {n: res[n] for n in sorted(ts.names) if n in res}
        changed = v != (ts.sent_version or ts.client_version)
        if not changed and (ts.wildcard or not selected.keys() - ts.sent_names):
            return
        nonce = self.next_nonce()
        resp = DiscoveryResponse(
            version_info=v, type_url=type_url, nonce=nonce, resources=[r.any for r in selected.values()]
        )
        sent = Sent(
            self.node,
            type_url,
            v,
            nonce,
            {n: r.version for n, r in selected.items()},
            full_state=ts.wildcard,
            delta=False,
        )
        ts.sent_version, ts.sent_names, ts.last_nonce, ts.last_sent = v, set(selected), nonce, sent
        ts.pending, ts.parked = False, ""
        self.server.hooks.on_sent(sent)
        self.out.put_nowait(resp)


class _DeltaStream(_Stream):
    delta = True

    def __init__(self, server: AdsServer, context: Any = None) -> None:
        super().__init__(server, context)
        self.types: dict[str, _DeltaType] = {}

    def handle(self, req: DeltaDiscoveryRequest) -> None:
        self.bind(req.node.id)
        t = req.type_url
        if t not in ORDER:
            log.debug("ignoring delta request for unserved type %s from %s", t, self.node)
            return
        sub, unsub = set(req.resource_names_subscribe), set(req.resource_names_unsubscribe)
        ts = self.types.get(t)
        if ts is None:
            # Legacy wildcard: the first LDS/CDS request naming nothing subscribes to everything.
            wildcard = "*" in sub or (t in WILDCARD_TYPES and not sub)
            ts = self.types[t] = _DeltaType(wildcard, set(), dict(req.initial_resource_versions))
            if not req.initial_resource_versions:
                self.server.hooks.on_fresh(self.node, t)
        elif "*" in sub:
            ts.wildcard = True
        if "*" in unsub:
            ts.wildcard = False
        ts.names |= sub - {"*"}
        ts.names -= unsub
        for n in unsub:
            ts.known.pop(n, None)  # the client forgets what it unsubscribes from
        if req.response_nonce:
            self._ack(ts, req)
        self.respond(t)

    def _ack(self, ts: _DeltaType, req: DeltaDiscoveryRequest) -> None:
        sent = ts.inflight.pop(req.response_nonce, None)
        if sent is None:
            log.debug("stale delta nonce %r for %s from %s", req.response_nonce, req.type_url, self.node)
            self.server.hooks.on_stale(self.node, req.type_url)
            return
        nack = req.HasField("error_detail")
        ev = AckEvent(sent, ack=not nack, error=req.error_detail.message if nack else "")
        if nack:
            # What was sent stays "known": it is not resent until its content changes.
            ts.parked = sent.version
            log.warning(
                "NACK from %s for %s version %s: %s",
                self.node,
                req.type_url,
                sent.version,
                ev.error,
                extra={
                    "node": self.node,
                    "type_url": req.type_url,
                    "version": sent.version,
                    "error": ev.error,
                },
            )
        self.server.hooks.on_ack(ev)

    def push(self) -> None:
        """Make before break: every addition and update first (CDS, EDS, LDS, RDS, SDS), then the
        removals, listeners first and clusters last — so a route moved off a cluster that goes away
        never points at a missing cluster (xDS "eventual consistency considerations").

        Listeners are the exception: their removals go in the same response as their additions.
        Envoy's LDS removes before it adds within one response, so a new Listener may take the
        address of one that goes away (a deleted Gateway's LB address handed to the next one);
        sent apart, the addition comes first and is NACKed as a duplicate address."""
        for t in ORDER:
            self.respond(t, removals=t == LISTENER)
        for t in REMOVAL_ORDER:
            self.respond(t, upserts=False)

    def respond(self, type_url: str, *, upserts: bool = True, removals: bool = True) -> None:
        ts = self.types.get(type_url)
        snap = self.watch.snapshot() if self.watch is not None else None
        if ts is None or snap is None:
            return
        v = snap.version(type_url)
        res = self.servable(snap, type_url)
        changed = []
        if upserts:
            scope = res.keys() if ts.wildcard else ts.names & res.keys()
            changed = [res[n] for n in sorted(scope) if ts.known.get(n) != res[n].version]
        removed = (
            sorted(n for n in ts.known if n not in res and (ts.wildcard or n in ts.names)) if removals else []
        )
        if v == ts.parked:
            # Parked on a rejected version: only serve names the client has never been sent.
            changed = [r for r in changed if r.name not in ts.known]
            removed = []
        if not changed and not removed:
            return
        nonce = self.next_nonce()
        resp = DeltaDiscoveryResponse(
            system_version_info=v,
            type_url=type_url,
            nonce=nonce,
            resources=[ResourcePb(name=r.name, version=r.version, resource=r.any) for r in changed],
            removed_resources=removed,
        )
        for r in changed:
            ts.known[r.name] = r.version
        for n in removed:
            del ts.known[n]
        sent = Sent(
            self.node, type_url, v, nonce, {r.name: r.version for r in changed}, tuple(removed), delta=True
        )
        ts.inflight[nonce] = sent
        if v != ts.parked:
            ts.parked = ""
        self.server.hooks.on_sent(sent)
        self.out.put_nowait(resp)


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves ``cache`` over ADS; :meth:`start` binds, :meth:`stop` closes streams."""

    def __init__(
        self, cache: SnapshotCache, hooks: Hooks | None = None, tls: ServerTls | None = None
    ) -> None:
        self.cache = cache
        self.hooks = hooks or Hooks()
        #: None = plaintext, anyone may ask as any node (in-process protocol tests only).
        self.tls = tls
        self.port = 0
        self._server: Any = None

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: Any
    ) -> AsyncIterator[DiscoveryResponse]:
        async for resp in _SotwStream(self, context).run(request_iterator, context):
            yield resp

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: Any
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        async for resp in _DeltaStream(self, context).run(request_iterator, context):
            yield resp

    async def start(self, addr: str) -> int:
        """Bind ``host:port`` (port 0 picks one) and serve; returns the bound port."""
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        if self.tls is None:
            self.port = self._server.add_insecure_port(addr)
        else:
            creds = grpc.ssl_server_credentials(
                [(self.tls.key_pem, self.tls.cert_pem)],
                root_certificates=self.tls.ca_pem,
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port(addr, creds)
        if not self.port:
            raise OSError(f"cannot bind ADS server on {addr}")
        await self._server.start()
        log.info("ADS server listening on %s (port %d)", addr, self.port)
        return int(self.port)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
