"""Node credentials for the xDS control plane: a small CA, a server certificate for xds and one client
certificate per node, written as files readable by their owner only.

Envoy of node N authenticates to xds with a certificate whose URI SAN is
``spiffe://<XDS_TRUST_DOMAIN>/node/<N>`` (and CN ``N``); xds serves a stream only when the
``node.id`` in its first request equals that name (services/xds/server.py). The CA is its own, not
the workload SPIFFE CA (services/identity): a node credential is provisioned by whoever deploys the
node (the local supervisor, an install step), not requested over the bus, so a workload SVID can
never be used to talk to xds and the identity service never has to trust a node's word.

Layout of a PKI directory (every directory 0700, every key 0600)::

    ca.crt  ca.key                       the xDS CA (the key never leaves this directory)
    server/ tls.crt tls.key ca.crt      xds's serving certificate
    nodes/<node>/ tls.crt tls.key ca.crt each node Envoy's client certificate

:func:`ensure_pki` keeps an existing CA and certificates (a restart must not lock out running
Envoys) and only issues what is missing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "XDS_TRUST_DOMAIN",
    "CertFiles",
    "ensure_pki",
    "node_files",
    "node_from_uris",
    "node_uri",
    "server_files",
    "write_private",
]

XDS_TRUST_DOMAIN = "xds.nodemesh"
_NODE_URI = re.compile(r"spiffe://xds\.nodemesh/node/([A-Za-z0-9][A-Za-z0-9.\-]{0,252})")
_LIFETIME = dt.timedelta(days=365)
_SKEW = dt.timedelta(minutes=5)


class CertFiles:
    """Paths of one certificate, its key and the CA that verifies the peer."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cert = directory / "tls.crt"
        self.key = directory / "tls.key"
        self.ca = directory / "ca.crt"

    def exists(self) -> bool:
        return self.cert.exists() and self.key.exists() and self.ca.exists()


def node_uri(node: str) -> str:
    return f"spiffe://{XDS_TRUST_DOMAIN}/node/{node}"


def node_from_uris(uris: list[str]) -> str | None:
    """The node a certificate's URI SANs name (exactly one node URI), else None."""
    found = [m.group(1) for u in uris if (m := _NODE_URI.fullmatch(u))]
    return found[0] if len(found) == 1 else None


def server_files(pki: Path) -> CertFiles:
    return CertFiles(pki / "server")


def node_files(pki: Path, node: str) -> CertFiles:
    if not _NODE_URI.fullmatch(node_uri(node)):
        raise ValueError(f"invalid node name {node!r}")
    return CertFiles(pki / "nodes" / node)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (atomically replaced)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"nodemesh xDS CA {now:%Y%m%d%H%M%S}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + 10 * _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[bytes, bytes]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _load_or_create_ca(pki: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, crt_path = pki / "ca.key", pki / "ca.crt"
    if key_path.exists() and crt_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an ECDSA key")
        return key, x509.load_pem_x509_certificate(crt_path.read_bytes())
    key, cert = _new_ca()
    write_private(key_path, _key_pem(key))
    write_private(crt_path, _cert_pem(cert))
    return key, cert


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_set(files: CertFiles, cert: bytes, key: bytes, ca: bytes) -> None:
    _private_dir(files.dir)
    write_private(files.key, key)
    write_private(files.cert, cert)
    write_private(files.ca, ca)


def ensure_pki(pki: Path, nodes: list[str], server_hosts: list[str]) -> None:
    """Create (or complete) the xDS PKI in ``pki`` for ``nodes``; xds serves as ``server_hosts``."""
    _private_dir(pki)
    _private_dir(pki / "nodes")
    ca_key, ca_cert = _load_or_create_ca(pki)
    ca_pem = _cert_pem(ca_cert)
    srv = server_files(pki)
    if not srv.exists():
        hosts = list(dict.fromkeys(["xds", *server_hosts]))  # "xds": what Envoy checks (bootstrap.py)
        cert, key = _issue(ca_key, ca_cert, "xds", [_san(h) for h in hosts], ExtendedKeyUsageOID.SERVER_AUTH)
        _write_set(srv, cert, key, ca_pem)
    for node in nodes:
        nf = node_files(pki, node)
        if nf.exists():
            continue
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node))]
        cert, key = _issue(ca_key, ca_cert, node, sans, ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_set(nf, cert, key, ca_pem)
