"""A small SPIFFE CA for authd's tests: signs CSRs on ``svid.sign.*`` and publishes the trust bundle,
and mints deliberately bad certificates for the refusal tests."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.msg import Msg

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode, encode
from nodemesh.messages.identity import SvidReply, SvidRequest, TrustBundle

Pub = ec.EllipticCurvePublicKey


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class SpiffeCA:
    def __init__(self, trust_domain: str = "cluster.local", ttl: float = 3600.0) -> None:
        self.trust_domain = trust_domain
        self.ttl = ttl
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {trust_domain}")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.signed: list[tuple[str, int]] = []  # (node, identity) of every CSR signed
        self.refuse: Callable[[str, int], bool] = lambda node, ident: False

    @property
    def bundle_pem(self) -> str:
        return _pem(self.cert)

    def issue(
        self,
        public_key: Pub,
        uris: list[str],
        *,
        not_before: float | None = None,
        not_after: float | None = None,
        ca: bool = False,
        key_cert_sign: bool = False,
    ) -> x509.Certificate:
        now = time.time()
        nb = dt.datetime.fromtimestamp(now - 30 if not_before is None else not_before, dt.UTC)
        na = dt.datetime.fromtimestamp(now + self.ttl if not_after is None else not_after, dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh")]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if uris:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
            )
        if not ca:
            # key_cert_sign: a rogue leaf that may sign certificates (the SVID profile forbids it).
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, key_cert_sign, False, False, False),
                critical=True,
            )
            b = b.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        return b.sign(self.key, hashes.SHA256())

    def svid(self, identity: int, **kw: object) -> tuple[str, bytes]:
        """(cert chain PEM, key PEM) of a fresh SVID for ``identity`` (for rogue peers)."""
        key = ec.generate_private_key(ec.SECP256R1())
        uris = kw.pop("uris", None) or [f"spiffe://{self.trust_domain}/identity/{identity}"]
        cert = self.issue(key.public_key(), uris, **kw)  # type: ignore[arg-type]
        return _pem(cert), key_pem(key)

    async def serve(self, bus: Bus) -> None:
        async def handle(msg: Msg) -> None:
            node = subjects.untoken(msg.subject.rsplit(".", 1)[-1])
            req = decode(msg.data, SvidRequest)
            if self.refuse(node, req.identity):
                # nats-py's Msg.respond has no headers argument: publish the error reply directly.
                await msg._client.publish(
                    msg.reply,
                    b"",
                    headers={"Nats-Service-Error": "refused", "Nats-Service-Error-Code": "403"},
                )
                return
            csr = x509.load_pem_x509_csr(req.csr_pem.encode())
            sid = f"spiffe://{self.trust_domain}/identity/{req.identity}"
            cert = self.issue(csr.public_key(), [sid])  # type: ignore[arg-type]
            self.signed.append((node, req.identity))
            reply = SvidReply(
                identity=req.identity,
                spiffe_id=sid,
                cert_chain_pem=_pem(cert),
                bundle_pem=self.bundle_pem,
                not_after=cert.not_valid_after_utc.timestamp(),
            )
            await msg.respond(encode(reply))

        await bus.nc.subscribe("svid.sign.*", cb=handle)
        kv = await bus.kv("trust")
        await kv.put(
            "bundle",
            encode(TrustBundle(trust_domain=self.trust_domain, roots_pem=[self.bundle_pem], revision=1)),
        )
