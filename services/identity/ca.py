"""The SPIFFE certificate authority: CSR checks and X.509-SVID issuance (pure; no I/O).

An SVID is issued only from a CSR (the private key stays where it was made), only ECDSA P-256,
and carries exactly one URI SAN ``spiffe://<td>/identity/<id>``, ``BasicConstraints(ca=False)``
(critical), ``KeyUsage(digitalSignature)`` (critical) and ``ExtendedKeyUsage(serverAuth,
clientAuth)`` — the X.509-SVID profile Cilium's handshake and py-spiffe expect. Every refusal is a
:class:`CsrError` with an HTTP-like code and a reason a human can act on.

A CSR is accepted with an empty subject (what authd sends) or a subject carrying only the SVID's
SPIFFE ID as CN, and with no extension request other than a SubjectAlternativeName that is exactly
the expected URI. Anything else is refused rather than silently dropped, so a caller never believes
it got something it did not.

Replay: a replayed CSR yields a certificate for the public key in it; only the holder of the
matching private key can use that certificate, so replay gains nothing and is not tracked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

__all__ = [
    "MAX_CSR_BYTES",
    "CaKeyPair",
    "CsrError",
    "fingerprint",
    "issue_svid",
    "new_ca",
    "spiffe_id",
]

MAX_CSR_BYTES = 8 * 1024  # a P-256 CSR PEM is ~500 bytes
CLOCK_SKEW = dt.timedelta(seconds=60)


class CsrError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class CaKeyPair:
    """A CA private key and its self-signed root certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        pub = cert.public_key()
        if (
            not isinstance(pub, ec.EllipticCurvePublicKey)
            or pub.public_numbers() != key.public_key().public_numbers()
        ):
            raise ValueError("CA certificate does not match the CA key")
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> CaKeyPair:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("CA key is not an ECDSA key")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spiffe_id(trust_domain: str, identity: int) -> str:
    return f"spiffe://{trust_domain}/identity/{identity}"


def new_ca(trust_domain: str, lifetime: dt.timedelta, now: dt.datetime | None = None) -> CaKeyPair:
    """A fresh ECDSA P-256 root for ``trust_domain`` (path length 0: it signs leaves only)."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh"),
            # Unique per key: two roots in one bundle must never share a subject (chain building).
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"nodemesh CA {trust_domain} {now:%Y%m%d} {secrets.token_hex(4)}"
            ),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), False
        )
        .sign(key, hashes.SHA256())
    )
    return CaKeyPair(key, cert)


def _check_csr(csr_pem: str, expected_uri: str) -> x509.CertificateSigningRequest:
    raw = csr_pem.encode()
    if len(raw) > MAX_CSR_BYTES:
        raise CsrError(413, f"CSR is {len(raw)} bytes (max {MAX_CSR_BYTES})")
    try:
        csr = x509.load_pem_x509_csr(raw)
    except ValueError as e:
        raise CsrError(400, f"CSR is not a PEM PKCS#10 request: {e}") from e
    try:
        if not csr.is_signature_valid:
            raise CsrError(400, "CSR signature is invalid (not signed by the key it carries)")
        key = csr.public_key()
    except (ValueError, InvalidSignature, TypeError) as e:
        raise CsrError(400, f"CSR cannot be verified: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CsrError(422, f"CSR key is {_key_name(key)}; only ECDSA P-256 is accepted")
    for attr in csr.subject:
        if not (attr.oid == NameOID.COMMON_NAME and attr.value == expected_uri):
            raise CsrError(422, f"CSR subject must be empty (got {csr.subject.rfc4514_string()!r})")
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension) as e:
        raise CsrError(400, f"CSR extensions are malformed: {e}") from e
    for ext in extensions:
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            raise CsrError(
                422,
                f"CSR requests extension {ext.oid.dotted_string} ({ext.oid._name}); only the SAN is allowed",
            )
        names = list(ext.value)
        if (
            len(names) != 1
            or not isinstance(names[0], x509.UniformResourceIdentifier)
            or names[0].value != expected_uri
        ):
            got = ", ".join(str(getattr(n, "value", n)) for n in names)
            raise CsrError(422, f"CSR SAN must be exactly {expected_uri} (got {got})")
    return csr


def _key_name(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    size = getattr(key, "key_size", None)
    return f"{type(key).__name__.replace('PublicKey', '').lstrip('_')}{f' {size}' if size else ''}"


def issue_svid(
    ca: CaKeyPair,
    csr_pem: str,
    *,
    trust_domain: str,
    identity: int,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, str]:
    """Check ``csr_pem`` and sign an X.509-SVID for ``identity``; (certificate, SPIFFE ID)."""
    uri = spiffe_id(trust_domain, identity)
    csr = _check_csr(csr_pem, uri)
    now = now or dt.datetime.now(dt.UTC)
    not_after = min(now + ttl, ca.not_after)
    if not_after <= now:
        raise CsrError(503, "the CA certificate has expired; rotate the CA")
    pub = csr.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh")]))
        .issuer_name(ca.cert.subject)
        .public_key(pub)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, uri
