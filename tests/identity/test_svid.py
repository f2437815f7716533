"""The SPIFFE CA: X.509-SVID fields, CSR refusals, trust bundle, rotation, mounted CA."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from spiffe import X509Svid

from nodemesh import subjects
from nodemesh.bus import Bus, RemoteError
from nodemesh.codec import encode
from nodemesh.messages.identity import CaRotateReply, CaRotateRequest, SvidReply, SvidRequest, TrustBundle
from services.identity.ca import new_ca
from services.identity.castore import merge_bundle

from .conftest import Cluster, Replica, RunReplica, eventually, ipcache_entry, kv_value

TD = "cluster.local"


def _csr(key: object, *, uri: str | None = None, cn: str | None = None, ca_ext: bool = False) -> str:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if uri:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    if ca_ext:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


class Setup(msgspec.Struct):
    replica: Replica
    hosted: int  # identity with an endpoint on node-1
    elsewhere: int  # identity only on node-2


@pytest.fixture
async def setup(bus: Bus, cluster: Cluster, run_replica: RunReplica) -> AsyncIterator[Setup]:
    await cluster.namespace("default")
    await cluster.pod("default", "a", {"app": "a"}, "node-1", "10.244.1.2")
    await cluster.pod("default", "b", {"app": "b"}, "node-2", "10.244.2.2")
    await cluster.synced()
    replica = await run_replica(svid_ttl=600)
    a = await eventually(lambda: ipcache_entry(bus, "10.244.1.2"), what="pod a")
    b = await eventually(lambda: ipcache_entry(bus, "10.244.2.2"), what="pod b")
    yield Setup(replica=replica, hosted=a.identity, elsewhere=b.identity)


async def _sign(bus: Bus, node: str, identity: int, csr: str) -> SvidReply:
    return await bus.request(
        subjects.svid_sign(node), SvidRequest(identity=identity, csr_pem=csr), SvidReply, timeout=10
    )


async def test_svid_fields_and_py_spiffe(bus: Bus, setup: Setup, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    reply = await _sign(bus, "node-1", setup.hosted, _csr(key))
    uri = f"spiffe://{TD}/identity/{setup.hosted}"
    assert reply.spiffe_id == uri and reply.identity == setup.hosted
    leaf = x509.load_pem_x509_certificate(reply.cert_chain_pem.encode())
    san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert len(list(san)) == 1  # exactly one SAN, and it is the URI
    bc = leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca is False
    ku = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    assert pub.public_numbers() == key.public_key().public_numbers()  # signed the CSR's key
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=500) < lifetime <= dt.timedelta(seconds=600)
    assert reply.not_after == leaf.not_valid_after_utc.timestamp()
    # Chains to the root in the reply's bundle, which is the one published in KV.
    roots = x509.load_pem_x509_certificates(reply.bundle_pem.encode())
    leaf.verify_directly_issued_by(roots[0])
    bundle = await kv_value(bus, "trust", "bundle", TrustBundle)
    assert bundle is not None and bundle.trust_domain == TD and "".join(bundle.roots_pem) == reply.bundle_pem
    assert "PRIVATE KEY" not in reply.bundle_pem
    # py-spiffe accepts it as an X.509-SVID.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    svid = X509Svid.parse(reply.cert_chain_pem.encode(), key_pem)
    assert str(svid.spiffe_id) == uri
    # The CA key is a 0600 file in the data directory.
    ca_dir = Path(setup.replica.svc.cfg.data_dir) / "ca" / "current"
    mode = stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode)
    assert mode == 0o600


async def test_csr_refusals(bus: Bus, setup: Setup) -> None:
    good = ec.generate_private_key(ec.SECP256R1())
    uri = f"spiffe://{TD}/identity/{setup.hosted}"

    async def refused(node: str, identity: int, csr: str) -> RemoteError:
        with pytest.raises(RemoteError) as ei:
            await _sign(bus, node, identity, csr)
        return ei.value

    e = await refused("node-1", 1, _csr(good))
    assert e.code == "403" and "reserved" in e.description
    e = await refused("node-1", setup.elsewhere, _csr(good))
    assert e.code == "403" and "no endpoint on node 'node-1'" in e.description
    e = await refused("node-1", 999_999, _csr(good))
    assert e.code == "404"
    e = await refused(
        "node-1",
        setup.hosted,
        "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n",
    )
    assert e.code == "400" and "PEM" in e.description
    e = await refused("node-1", setup.hosted, "x" * 9000)
    assert e.code == "413"
    # Bad signature: flip a byte inside the signature of a valid CSR.
    der = bytearray(x509.load_pem_x509_csr(_csr(good).encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    e = await refused("node-1", setup.hosted, tampered)
    assert e.code == "400" and "signature" in e.description
    e = await refused(
        "node-1", setup.hosted, _csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    assert e.code == "422" and "only ECDSA P-256" in e.description
    e = await refused("node-1", setup.hosted, _csr(ec.generate_private_key(ec.SECP384R1())))
    assert e.code == "422" and "secp384r1" in e.description
    e = await refused("node-1", setup.hosted, _csr(good, uri=f"spiffe://{TD}/identity/{setup.elsewhere}"))
    assert e.code == "422" and "SAN must be exactly" in e.description
    e = await refused("node-1", setup.hosted, _csr(good, cn="admin"))
    assert e.code == "422" and "subject" in e.description
    e = await refused("node-1", setup.hosted, _csr(good, ca_ext=True))
    assert e.code == "422" and "extension" in e.description
    # A garbage payload (not even a SvidRequest) gets a 400 from the runtime, and the CA keeps working.
    raw = await bus.nc.request(subjects.svid_sign("node-1"), b"\xc1\xc1", timeout=5)
    assert raw.headers and raw.headers["Nats-Service-Error-Code"] == "400"
    # The allowed twins: the exact SAN, and a CN equal to the SPIFFE ID, are accepted.
    assert (await _sign(bus, "node-1", setup.hosted, _csr(good, uri=uri))).spiffe_id == uri
    assert (await _sign(bus, "node-2", setup.elsewhere, _csr(good))).identity == setup.elsewhere
    _ = encode  # payload codec is the runtime's


async def test_rotation_keeps_old_root_until_its_svids_expire(bus: Bus, setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before = await _sign(bus, "node-1", setup.hosted, _csr(key))
    old_leaf = x509.load_pem_x509_certificate(before.cert_chain_pem.encode())
    reply = await bus.request(
        subjects.IDENTITY_CA_ROTATE, CaRotateRequest(reason="test"), CaRotateReply, timeout=10
    )
    assert len(reply.bundle.roots_pem) == 2
    assert reply.old_root_kept_until >= old_leaf.not_valid_after_utc.timestamp()
    after = await _sign(bus, "node-1", setup.hosted, _csr(key))
    new_leaf = x509.load_pem_x509_certificate(after.cert_chain_pem.encode())
    roots = x509.load_pem_x509_certificates(after.bundle_pem.encode())
    assert len(roots) == 2
    new_leaf.verify_directly_issued_by(roots[0])  # the new root signs …
    old_leaf.verify_directly_issued_by(roots[1])  # … and the old one is still trusted
    assert new_leaf.issuer != old_leaf.issuer
    bundle = await kv_value(bus, "trust", "bundle", TrustBundle)
    assert bundle is not None and bundle.revision >= 2 and len(bundle.roots_pem) == 2


def test_merge_bundle_prunes_retired_roots_after_keep_time() -> None:
    a, b = new_ca(TD, dt.timedelta(days=1)), new_ca(TD, dt.timedelta(days=1))
    first = merge_bundle(None, a.cert_pem, trust_domain=TD, now=1000.0, keep_for=3600.0)
    assert first.roots_pem == [a.cert_pem] and first.revision == 1
    assert merge_bundle(first, a.cert_pem, trust_domain=TD, now=1001.0, keep_for=3600.0) == first
    rotated = merge_bundle(first, b.cert_pem, trust_domain=TD, now=2000.0, keep_for=3600.0)
    assert rotated.roots_pem == [b.cert_pem, a.cert_pem] and rotated.keep_until == {a.fingerprint: 5600.0}
    still = merge_bundle(rotated, b.cert_pem, trust_domain=TD, now=5599.0, keep_for=3600.0)
    assert still.roots_pem == [b.cert_pem, a.cert_pem]  # never before every old SVID expired
    pruned = merge_bundle(still, b.cert_pem, trust_domain=TD, now=5601.0, keep_for=3600.0)
    assert pruned.roots_pem == [b.cert_pem] and pruned.keep_until == {} and pruned.revision == 3


async def test_mounted_ca_secret(bus: Bus, cluster: Cluster, run_replica: RunReplica, tmp_path: Path) -> None:
    ca = new_ca("example.org", dt.timedelta(days=30))
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "tls.key").write_bytes(ca.key_pem)
    (secret / "tls.crt").write_text(ca.cert_pem)
    await cluster.namespace("default")
    await cluster.pod("default", "a", {"app": "a"}, "node-1", "10.244.1.2")
    await cluster.synced()
    await run_replica(ca_dir=str(secret), trust_domain="example.org")
    a = await eventually(lambda: ipcache_entry(bus, "10.244.1.2"), what="pod a")
    reply = await _sign(bus, "node-1", a.identity, _csr(ec.generate_private_key(ec.SECP256R1())))
    assert reply.spiffe_id == f"spiffe://example.org/identity/{a.identity}"
    x509.load_pem_x509_certificate(reply.cert_chain_pem.encode()).verify_directly_issued_by(ca.cert)
    with pytest.raises(RemoteError) as ei:
        await bus.request(subjects.IDENTITY_CA_ROTATE, CaRotateRequest(), CaRotateReply)
    assert ei.value.code == "409" and "Secret" in ei.value.description
