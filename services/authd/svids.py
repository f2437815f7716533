"""Keys and X.509-SVIDs of the identities hosted on this node.

For each hosted identity (an endpoint of it runs on this node) authd generates an ECDSA P-256 key
in memory, sends a CSR on ``svid.sign.<node>`` and keeps the SVID; it renews at ``renew_fraction``
of the lifetime and drops the key when the identity stops being hosted. Keys never leave this
process: not on NATS (only the CSR goes), not on disk (TLS contexts load them through a memfd), not
to the datapath or Envoy. The Workload API gets a *separate* key per identity (purpose
``workload``), so a workload never holds the key authd handshakes with.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter, Gauge

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.errors import BusError
from nodemesh.messages.identity import SvidReply, SvidRequest, TrustBundle
from services.authd.spiffe import AuthFailure, check_leaf, spiffe_id
from services.authd.tlsctx import client_context, server_context

__all__ = ["Purpose", "Svid", "SvidStore"]

log = logging.getLogger("nodemesh.authd.svids")
Purpose = Literal["authd", "workload"]


class Svid:
    """One identity's key and SVID (and, for purpose ``authd``, its TLS contexts)."""

    def __init__(
        self, identity: int, key: ec.EllipticCurvePrivateKey, chain_pem: str, leaf: x509.Certificate
    ) -> None:
        self.identity = identity
        self.key = key
        self.chain_pem = chain_pem
        self.leaf = leaf
        self.not_before = leaf.not_valid_before_utc.timestamp()
        self.not_after = leaf.not_valid_after_utc.timestamp()
        self.client_ctx: ssl.SSLContext | None = None
        self.server_ctx: ssl.SSLContext | None = None

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def key_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def chain_der(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(self.chain_pem.encode())
        )


Listener = Callable[[int, "Purpose", "Svid | None"], None]


class SvidStore:
    """SVIDs of hosted identities, kept current; ``listeners`` hear of every new, renewed or dropped one."""

    def __init__(
        self,
        bus: Bus,
        node: str,
        trust_domain: str,
        registry: CollectorRegistry,
        *,
        renew_fraction: float = 0.5,
        request_timeout: float = 5.0,
    ) -> None:
        self.bus = bus
        self.node = node
        self.trust_domain = trust_domain
        self.renew_fraction = renew_fraction
        self.request_timeout = request_timeout
        self.bundle_pem = ""
        self.bundle_revision = -1
        self.hosted: set[int] = set()
        self.svids: dict[tuple[int, Purpose], Svid] = {}
        self.listeners: list[Listener] = []
        self.bundle_listeners: list[Callable[[], None]] = []
        self._due: dict[tuple[int, Purpose], float] = {}
        self._wake = asyncio.Event()
        self._failures: dict[tuple[int, Purpose], int] = {}
        self._by_server_ctx: dict[ssl.SSLContext, Svid] = {}
        self._ready: dict[int, threading.Event] = {}  # hosted identity → set once its SVID is in
        self.base_server_ctx: ssl.SSLContext | None = None
        self.sni_callback: Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None] | None = None
        self._m_svids = Gauge("nodemesh_auth_svids", "SVIDs held in memory", ["purpose"], registry=registry)
        self._m_issued = Counter(
            "nodemesh_auth_svid_requests", "CSRs sent to the CA, by result", ["result"], registry=registry
        )

    # --- queries (also called from handshake threads; plain dict reads) ------------------------
    def get(self, identity: int, purpose: Purpose = "authd") -> Svid | None:
        return self.svids.get((identity, purpose))

    def by_server_ctx(self, ctx: ssl.SSLContext) -> Svid | None:
        return self._by_server_ctx.get(ctx)

    def wait_ready(self, identity: int, timeout: float) -> Svid | None:
        """(Handshake thread.) The SVID of a hosted identity, waiting up to ``timeout`` if it is
        still being issued — a peer that handshakes the moment a pod appears is held for the
        milliseconds the CSR takes instead of being refused and retrying."""
        svid = self.get(identity)
        if svid is not None and svid.server_ctx is not None:
            return svid
        ev = self._ready.get(identity)
        if ev is None or identity not in self.hosted:
            return None
        ev.wait(timeout)
        return self.get(identity)

    # --- inputs ---------------------------------------------------------------------------------
    def set_bundle(self, bundle: TrustBundle) -> None:
        pem = "\n".join(bundle.roots_pem)
        if not pem.strip() or (pem == self.bundle_pem and bundle.trust_domain == self.trust_domain):
            return
        self.bundle_pem = pem
        self.bundle_revision = bundle.revision
        if bundle.trust_domain:
            self.trust_domain = bundle.trust_domain
        log.info("trust bundle revision %d (%d roots)", bundle.revision, len(bundle.roots_pem))
        self._rebuild_contexts()
        for fn in self.bundle_listeners:
            fn()

    def set_hosted(self, identities: set[int]) -> None:
        added = identities - self.hosted
        removed = self.hosted - identities
        self.hosted = set(identities)
        for ident in removed:
            self._drop(ident, "authd")
            self._drop(ident, "workload")
        for ident in added:
            self._due[(ident, "authd")] = 0.0
            self._ready.setdefault(ident, threading.Event())
        if added:
            self._wake.set()

    def want_workload(self, identity: int) -> None:
        """A workload asked for its SVID: issue the workload-purpose SVID if not yet there."""
        if identity in self.hosted and (identity, "workload") not in self.svids:
            self._due.setdefault((identity, "workload"), 0.0)
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Issue and renew SVIDs as they come due (several CSRs in flight at once)."""
        inflight: set[tuple[int, Purpose]] = set()
        tasks: set[asyncio.Task[None]] = set()
        while True:
            now = time.time()
            for k, due in sorted(self._due.items(), key=lambda kv: kv[1]):
                if due > now or k in inflight:
                    continue
                if k[0] not in self.hosted:
                    self._due.pop(k, None)
                    continue
                inflight.add(k)
                t = asyncio.create_task(self._issue(k))
                tasks.add(t)
                t.add_done_callback(functools.partial(self._issued, inflight, tasks, k))
            pending = [d for k, d in self._due.items() if k not in inflight]
            timeout = max(0.0, min(pending) - time.time()) if pending else None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _issued(
        self,
        inflight: set[tuple[int, Purpose]],
        tasks: set[asyncio.Task[None]],
        k: tuple[int, Purpose],
        t: asyncio.Task[None],
    ) -> None:
        inflight.discard(k)
        tasks.discard(t)
        self._wake.set()

    async def _issue(self, k: tuple[int, Purpose]) -> None:
        ident, purpose = k
        try:
            svid = await self._request(ident)
        except (AuthFailure, BusError, ValueError) as e:
            n = self._failures.get(k, 0) + 1
            self._failures[k] = n
            delay = min(0.2 * 2**n, 10.0)
            log.warning("SVID for identity %d (%s) failed, retry in %.1fs: %s", ident, purpose, delay, e)
            self._m_issued.labels(result="failed").inc()
            if k[0] in self.hosted:
                self._due[k] = time.time() + delay
            return
        self._m_issued.labels(result="ok").inc()
        self._failures.pop(k, None)
        if ident not in self.hosted:
            return  # the last endpoint went while the CSR was out: drop the key at once
        if purpose == "authd":
            self._build_contexts(svid)
        old = self.svids.get(k)
        self.svids[k] = svid
        if purpose == "authd" and svid.server_ctx is not None:
            self._ready.setdefault(ident, threading.Event()).set()
        if old is not None and old.server_ctx is not None:
            self._by_server_ctx.pop(old.server_ctx, None)
        life = svid.not_after - max(svid.not_before, time.time() - 1)
        jitter = random.uniform(0.0, 0.05) * life
        self._due[k] = time.time() + max(0.5, life * self.renew_fraction - jitter)
        self._m_svids.labels(purpose=purpose).set(sum(1 for kk in self.svids if kk[1] == purpose))
        log.info("SVID for identity %d (%s) until %.0f", ident, purpose, svid.not_after)
        for fn in self.listeners:
            fn(ident, purpose, svid)

    async def _request(self, ident: int) -> Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        sid = spiffe_id(self.trust_domain, ident)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        req = SvidRequest(
            identity=ident, csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), node=self.node
        )
        reply = await self.bus.request(
            subjects.svid_sign(self.node), req, SvidReply, timeout=self.request_timeout
        )
        certs = x509.load_pem_x509_certificates(reply.cert_chain_pem.encode())
        leaf = certs[0]
        ours = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            raise AuthFailure("bad-svid", "CA returned a certificate for another key")
        check_leaf(leaf.public_bytes(serialization.Encoding.DER), self.trust_domain, ident, time.time())
        if not self.bundle_pem and reply.bundle_pem:
            self.set_bundle(TrustBundle(trust_domain=self.trust_domain, roots_pem=[reply.bundle_pem]))
        return Svid(ident, key, reply.cert_chain_pem, leaf)

    def _drop(self, ident: int, purpose: Purpose) -> None:
        k = (ident, purpose)
        self._due.pop(k, None)
        if purpose == "authd":
            ev = self._ready.pop(ident, None)
            if ev is not None:
                ev.set()  # release waiting handshakes: they will find no SVID and refuse
        svid = self.svids.pop(k, None)
        if svid is None:
            return
        if svid.server_ctx is not None:
            self._by_server_ctx.pop(svid.server_ctx, None)
        self._m_svids.labels(purpose=purpose).set(sum(1 for kk in self.svids if kk[1] == purpose))
        log.info("dropped key of identity %d (%s): no endpoint left on this node", ident, purpose)
        for fn in self.listeners:
            fn(ident, purpose, None)

    # --- TLS contexts -------------------------------------------------------------------------------
    def _build_contexts(self, svid: Svid) -> None:
        if not self.bundle_pem:
            return
        key_pem = svid.key_pem()
        svid.client_ctx = client_context(svid.chain_pem, key_pem, self.bundle_pem)
        svid.server_ctx = server_context(self.bundle_pem, svid.chain_pem, key_pem)
        self._by_server_ctx[svid.server_ctx] = svid

    def _rebuild_contexts(self) -> None:
        self.base_server_ctx = server_context(self.bundle_pem, sni_callback=self.sni_callback)
        self._by_server_ctx.clear()
        for (ident, purpose), svid in list(self.svids.items()):
            if purpose == "authd":
                self._build_contexts(svid)
                self._ready.setdefault(ident, threading.Event()).set()
