"""SPIFFE naming and the checks authd makes on a peer's X.509-SVID (pure; no I/O).

SPIFFE IDs are ``spiffe://<trust-domain>/identity/<numeric id>`` and the handshake's SNI is
``<id>.<trust-domain>``, both as Cilium's (pkg/auth/spire/certificate_provider.go), so the names stay
interoperable. OpenSSL verifies the chain and validity window during the handshake; these checks run
on the verified leaf afterwards and are the part Python's ``ssl`` cannot express: exactly one URI
SAN, the expected one, and not a CA certificate.
"""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

__all__ = [
    "AuthFailure",
    "LeafInfo",
    "check_leaf",
    "identity_from_sni",
    "identity_from_spiffe_id",
    "reason_from_ssl_error",
    "sni",
    "spiffe_id",
]

_ID_PATH = re.compile(r"^/identity/([1-9][0-9]{0,9})$")


class AuthFailure(Exception):
    """A handshake or a check that failed; ``reason`` is the short code counted in metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def spiffe_id(trust_domain: str, identity: int) -> str:
    return f"spiffe://{trust_domain}/identity/{identity}"


def sni(identity: int, trust_domain: str) -> str:
    return f"{identity}.{trust_domain}"


def identity_from_sni(name: str | None, trust_domain: str) -> int | None:
    """The numeric identity an SNI asks for, or None if it is not ``<id>.<trust-domain>``."""
    if not name:
        return None
    head, _, tail = name.partition(".")
    if tail != trust_domain or not head.isdigit() or head.startswith("0"):
        return None
    return int(head)


def identity_from_spiffe_id(uri: str, trust_domain: str) -> int | None:
    prefix = f"spiffe://{trust_domain}"
    if not uri.startswith(prefix):
        return None
    m = _ID_PATH.fullmatch(uri[len(prefix) :])  # `$` alone would accept a trailing newline
    return int(m.group(1)) if m else None


class LeafInfo:
    """What authd keeps from a verified peer leaf."""

    __slots__ = ("identity", "not_after", "not_before", "spiffe_id")

    def __init__(self, spiffe_id: str, identity: int, not_before: float, not_after: float) -> None:
        self.spiffe_id = spiffe_id
        self.identity = identity
        self.not_before = not_before
        self.not_after = not_after


def check_leaf(der: bytes | None, trust_domain: str, expected: int | None, now: float) -> LeafInfo:
    """Check a peer leaf: not a CA, exactly one URI SAN, a SPIFFE ID of this trust domain naming
    ``expected`` (or any identity when ``expected`` is None — the responder learns the initiator's
    claim from the certificate), inside its validity window."""
    if not der:
        raise AuthFailure("no-peer-cert", "peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise AuthFailure("bad-cert", str(e)) from e
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
        if isinstance(bc, x509.BasicConstraints) and bc.ca:
            raise AuthFailure("ca-as-leaf", "peer leaf is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    # The X.509-SVID profile: a leaf signs (digitalSignature) and never signs certificates or CRLs.
    try:
        ku = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        ku = None
    if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise AuthFailure(
            "key-usage", "peer leaf's KeyUsage is not digitalSignature only (no certSign/cRLSign)"
        )
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        uris = (
            san.get_values_for_type(x509.UniformResourceIdentifier)
            if isinstance(san, x509.SubjectAlternativeName)
            else []
        )
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise AuthFailure("san-count", f"peer leaf has {len(uris)} URI SANs, want exactly 1")
    uri = uris[0]
    ident = identity_from_spiffe_id(uri, trust_domain)
    if ident is None:
        raise AuthFailure("wrong-san", f"{uri} is not an identity of trust domain {trust_domain}")
    if expected is not None and ident != expected:
        raise AuthFailure("wrong-san", f"{uri}, want {spiffe_id(trust_domain, expected)}")
    nb = cert.not_valid_before_utc.timestamp()
    na = cert.not_valid_after_utc.timestamp()
    if now < nb:
        raise AuthFailure("not-yet-valid", f"valid from {_iso(nb)}")
    if now > na:
        raise AuthFailure("expired", f"expired at {_iso(na)}")
    return LeafInfo(uri, ident, nb, na)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# OpenSSL X509_V_ERR_* codes → reason codes (include/openssl/x509_vfy.h).
_VERIFY_REASONS = {
    2: "untrusted-chain",  # unable to get issuer certificate
    7: "untrusted-chain",  # certificate signature failure
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted-chain",  # self-signed leaf
    19: "untrusted-chain",  # self-signed certificate in chain
    20: "untrusted-chain",  # unable to get local issuer certificate
    21: "untrusted-chain",  # unable to verify the first certificate
    24: "untrusted-chain",  # invalid CA certificate
    26: "invalid-purpose",
}


def reason_from_ssl_error(e: BaseException) -> AuthFailure:
    """Map what ``ssl`` raised during a handshake to a reason code.

    A local verification failure carries OpenSSL's verify code; a refusal by the peer arrives as a
    TLS alert (``…_ALERT_…``), which means the *peer* rejected us.
    """
    if isinstance(e, ssl.SSLCertVerificationError):
        code = int(getattr(e, "verify_code", 0) or 0)
        return AuthFailure(_VERIFY_REASONS.get(code, "verify-failed"), str(getattr(e, "verify_message", e)))
    text = str(e)
    reason = getattr(e, "reason", None) or ""
    if "UNRECOGNIZED_NAME" in reason:
        return AuthFailure("not-hosted", f"peer does not host the requested identity ({reason})")
    if "ALERT" in reason or "alert" in text:
        return AuthFailure("peer-refused", reason or text)
    if isinstance(e, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError):
        return AuthFailure("peer-refused", "peer closed the connection without confirming")
    if isinstance(e, TimeoutError):
        return AuthFailure("timeout", text)
    if isinstance(e, ssl.SSLError):
        return AuthFailure("tls-error", reason or text)
    return AuthFailure("io-error", f"{type(e).__name__}: {text}")
