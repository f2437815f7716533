"""The CA at run time: ``svid.sign.<node>`` and ``identity.ca.rotate``, the trust bundle, rotation.

The node a CSR is for is taken from the request's *subject*: NATS lets only ``authd-<node>``
publish on ``svid.sign.<node>`` (nodemesh/natsauth.py), so the subject proves the asker; the
``node`` field of the payload is ignored. Refusals (RequestError code → reason):

    413 CSR too large · 403 reserved identity · 404 no such identity · 403 identity has no endpoint
    on the asking node · 400 not a PEM CSR / bad signature · 422 key not ECDSA P-256, or a subject,
    SAN or extension other than the SVID's · 503 CA expired or not loaded
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from nats.micro.request import Request
from prometheus_client import CollectorRegistry, Counter

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.kvmirror import Conflict, KvMirror
from nodemesh.labels import is_reserved, parse_endpoint
from nodemesh.messages.identity import (
    CaRotateReply,
    CaRotateRequest,
    Identity,
    SvidReply,
    SvidRequest,
    TrustBundle,
)
from nodemesh.runtime import RequestError
from nodemesh.streams import TRUST_BUNDLE_KEY, identity_key

from .allocator import Allocator
from .ca import MAX_CSR_BYTES, CaKeyPair, CsrError, issue_svid
from .castore import CaStoreError, load_ca, merge_bundle, rotate_ca
from .config import IdentityConfig

__all__ = ["Signer"]

log = logging.getLogger("nodemesh.identity.ca")


class Signer:
    def __init__(
        self,
        cfg: IdentityConfig,
        bus: Bus,
        alloc: Allocator,
        trust: KvMirror[TrustBundle],
        *,
        is_leader: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.alloc = alloc
        self.trust = trust
        self.is_leader = is_leader
        self.mounted = bool(cfg.ca_dir)
        self.directory = cfg.ca_dir or f"{cfg.data_dir}/ca"
        self.ca: CaKeyPair | None = None
        self._lock = asyncio.Lock()
        self._issued = Counter(
            "nodemesh_identity_svids", "SVID requests by result", ["result"], registry=registry
        )

    @property
    def keep_for(self) -> float:
        """How long a retired root stays trusted: every SVID it signed expires before it leaves."""
        return self.cfg.svid_ttl + 2 * self.cfg.ca_check_interval + 60.0

    # --- CA lifecycle ----------------------------------------------------------------------------
    def load(self) -> bool:
        """(Re)read the CA files; True if the signing root changed."""
        ca = load_ca(
            self.directory,
            mounted=self.mounted,
            trust_domain=self.cfg.trust_domain,
            lifetime=dt.timedelta(seconds=self.cfg.ca_lifetime),
        )
        if self.ca is not None and ca.fingerprint == self.ca.fingerprint:
            return False
        if self.ca is not None:
            log.info("CA changed on disk: now signing with %s", ca.fingerprint[:16])
        self.ca = ca
        return True

    async def publish_bundle(self) -> TrustBundle | None:
        """Merge our signing root into the KV bundle (CAS) and announce a change on trust.bundle."""
        assert self.ca is not None
        while True:
            held = self.trust.get(TRUST_BUNDLE_KEY)
            prev = held[0] if held else None
            if prev is not None and prev.roots_pem and prev.trust_domain == self.cfg.trust_domain:
                head = _cert(prev.roots_pem[0])
                if head is not None and head.not_valid_before_utc > self.ca.cert.not_valid_before_utc:
                    return None  # another replica rotated: we are behind, the CA loop reloads
            bundle = merge_bundle(
                prev,
                self.ca.cert_pem,
                trust_domain=self.cfg.trust_domain,
                now=time.time(),
                keep_for=self.keep_for,
            )
            if prev is not None and prev == bundle:
                return prev
            try:
                await self.trust.update(
                    TRUST_BUNDLE_KEY,
                    bundle,
                    last=held[1] if held else self.trust.revisions.get(TRUST_BUNDLE_KEY, 0),
                )
            except Conflict:
                continue
            await self.bus.js_publish(subjects.TRUST_BUNDLE, bundle, msg_id=f"bundle:{bundle.revision}")
            log.info("trust bundle revision %d: %d root(s)", bundle.revision, len(bundle.roots_pem))
            return bundle

    async def loop(self) -> None:
        """Follow the CA files, prune retired roots, rotate before the CA expires (leader only)."""
        while True:
            await asyncio.sleep(self.cfg.ca_check_interval)
            try:
                async with self._lock:
                    self.load()
                    await self.publish_bundle()
                    assert self.ca is not None
                    left = self.ca.not_after.timestamp() - time.time()
                    if not self.mounted and self.is_leader() and left < self.cfg.ca_rotate_before:
                        log.info("CA expires in %.0fs: rotating", left)
                        await self._rotate()
            except (CaStoreError, OSError) as e:
                log.error("CA check failed: %s", e)

    async def _rotate(self) -> tuple[CaKeyPair, CaKeyPair]:
        old, new = await asyncio.to_thread(
            rotate_ca,
            self.directory,
            trust_domain=self.cfg.trust_domain,
            lifetime=dt.timedelta(seconds=self.cfg.ca_lifetime),
        )
        # Trust first, sign second: the new root is in the published bundle before any SVID
        # under it exists; the old one stays until its last SVID has expired.
        self.ca = new
        await self.publish_bundle()
        return old, new

    async def rotate(self, req: CaRotateRequest, _r: Request) -> CaRotateReply:
        if self.mounted:
            raise RequestError(409, "the CA is a mounted Secret: rotate it by updating the Secret")
        async with self._lock:
            log.info("CA rotation requested (%s)", req.reason or "no reason given")
            old, new = await self._rotate()
        held = self.trust.get(TRUST_BUNDLE_KEY)
        if held is None:
            raise RequestError(503, "trust bundle not published")
        return CaRotateReply(
            bundle=held[0],
            new_root_fingerprint=new.fingerprint,
            old_root_kept_until=held[0].keep_until.get(old.fingerprint, 0.0),
        )

    # --- signing ---------------------------------------------------------------------------------
    async def sign(self, req: SvidRequest, r: Request) -> SvidReply:
        try:
            reply = await self._sign(req, r.subject)
        except RequestError as e:
            self._issued.labels(result=str(e.code)).inc()
            log.info("refused SVID for identity %s on %s: %s", req.identity, r.subject, e.description)
            raise
        self._issued.labels(result="issued").inc()
        return reply

    async def _sign(self, req: SvidRequest, subject: str) -> SvidReply:
        node = subjects.untoken(subject.split(".", 2)[2]) if subject.count(".") >= 2 else ""
        if len(req.csr_pem.encode()) > MAX_CSR_BYTES:
            raise RequestError(413, f"CSR is {len(req.csr_pem.encode())} bytes (max {MAX_CSR_BYTES})")
        if is_reserved(req.identity):
            raise RequestError(403, f"identity {req.identity} is reserved; reserved identities get no SVID")
        ident = self.alloc.identity(req.identity)
        if ident is None or not _hosted(ident, node):
            value, _ = await self.alloc.m.fetch(identity_key(req.identity))  # the mirror may lag a new pod
            ident = value if isinstance(value, Identity) else None
        if ident is None:
            raise RequestError(404, f"identity {req.identity} does not exist")
        if not _hosted(ident, node):
            raise RequestError(403, f"identity {req.identity} has no endpoint on node {node!r}")
        ca = self.ca
        if ca is None:
            raise RequestError(503, "CA not loaded")
        try:
            cert, uri = issue_svid(
                ca,
                req.csr_pem,
                trust_domain=self.cfg.trust_domain,
                identity=req.identity,
                ttl=dt.timedelta(seconds=self.cfg.svid_ttl),
            )
        except CsrError as e:
            raise RequestError(e.code, e.reason) from e
        held = self.trust.get(TRUST_BUNDLE_KEY)
        roots = held[0].roots_pem if held else [ca.cert_pem]
        return SvidReply(
            identity=req.identity,
            spiffe_id=uri,
            cert_chain_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            bundle_pem="".join(roots),
            not_after=cert.not_valid_after_utc.timestamp(),
        )


def _hosted(ident: Identity, node: str) -> bool:
    return any(parse_endpoint(ref)[0] == node for ref in ident.refs)


def _cert(pem: str) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
