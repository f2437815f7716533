"""Certificates the upstream suite creates in code (``generated_objects``): self-signed and CA-signed."""

from __future__ import annotations

import base64
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyPair", "ca_signed", "client_signed", "make_ca", "self_signed", "tls_secret"]

KeyPair = tuple[bytes, bytes]  # (cert PEM, key PEM)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(k: rsa.RSAPrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _sans(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if h == "*":
                names.append(x509.UniformResourceIdentifier("*"))
            else:
                names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _builder(subject: x509.Name, issuer: x509.Name, pub: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
    )


def self_signed(hosts: list[str]) -> KeyPair:
    """A self-signed server certificate (CN=default, O=Acme Co) for ``hosts``, usable as its own root."""
    k = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "default"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Co"),
        ]
    )
    cert = (
        _builder(name, name, k.public_key())
        .add_extension(_sans(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(k, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(k)


def make_ca() -> tuple[KeyPair, rsa.RSAPrivateKey, x509.Certificate]:
    k = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "gatewayapi"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kubernetes Gateway API"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )
    cert = (
        _builder(name, name, k.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(k, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM), _pem_key(k)), k, cert


def ca_signed(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, hosts: list[str]) -> KeyPair:
    k = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "default")])
    cert = (
        _builder(name, ca_cert.subject, k.public_key())
        .add_extension(_sans(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(k)


def client_signed(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, name: str) -> KeyPair:
    """A client certificate (extended key usage clientAuth) signed by the CA, for mutual TLS."""
    k = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca_cert.subject, k.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(k)


def tls_secret(namespace: str, name: str, pair: KeyPair) -> dict[str, object]:
    """A ``kubernetes.io/tls`` Secret object holding the pair."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"namespace": namespace, "name": name},
        "data": {
            "tls.crt": base64.b64encode(pair[0]).decode(),
            "tls.key": base64.b64encode(pair[1]).decode(),
        },
    }
