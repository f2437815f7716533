"""nodemesh's own conformance cases (conformance/corpus) against the real Envoy, and the format extensions
(client certificates, ``connection_fails``, h2c, WebSocket) failing when the gateway misbehaves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from conformance.__main__ import EXTENSION_DIR
from conformance.cases import Generated, load_case, load_index
from conformance.checks import compare_http
from conformance.client import Response
from conformance.runner import run_case
from conformance.standalone import Standalone

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
CONTROLLER = "nodemesh.io/gateway-controller"


def test_connection_fails_passes_only_without_a_response() -> None:
    want = {"connection_fails": True}
    assert compare_http(Response(error="SSLError: tlsv13 alert certificate required"), want, {}) == ""
    assert "want the connection refused" in compare_http(Response(status=200), want, {})


def test_websocket_message_must_come_back_unchanged() -> None:
    want = {"status": 101, "websocket_message": "hi"}
    assert compare_http(Response(status=101, body=b"hi"), want, {}) == ""
    assert "websocket echoed" in compare_http(Response(status=101, body=b"hx"), want, {})


def test_client_certificates_are_signed_by_the_case_ca() -> None:
    from cryptography import x509

    gen = Generated()
    gen.objects(
        [
            {
                "kind": "Secret",
                "namespace": "n",
                "name": "c",
                "certificate": "client certificate signed by the CA",
            }
        ]
    )
    pair = gen.key_pair("Secret n/c (tls.crt, tls.key)")
    assert pair is not None
    cert = x509.load_pem_x509_certificate(pair[0])
    ca = x509.load_pem_x509_certificate(gen.ca_pair[0])
    assert cert.issuer == ca.subject
    assert (
        x509.ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


@ROOT_ONLY
@pytest.mark.envoy
async def test_every_extension_case_passes() -> None:
    gen = Generated()
    names = [c["name"] for c in load_index(EXTENSION_DIR)]
    assert len(names) >= 13
    async with Standalone() as c:
        results = [
            await run_case(c, load_case(EXTENSION_DIR, n, "nodemesh", CONTROLLER), gen, CONTROLLER)
            for n in names
        ]
    assert [(r.name, r.reason) for r in results if not r.passed] == []


@ROOT_ONLY
@pytest.mark.envoy
async def test_a_gateway_without_client_validation_fails_the_mtls_case(tmp_path: Path) -> None:
    """The same case with the Gateway's ``spec.tls`` removed: the refusal checks must fail."""
    corpus = tmp_path / "corpus"
    shutil.copytree(EXTENSION_DIR, corpus)
    path = corpus / "cases" / "GatewayFrontendClientCertificateValidation.yaml"
    case = yaml.safe_load(path.read_text())
    for m in case["manifests"]:
        if m["kind"] == "Gateway":
            del m["spec"]["tls"]
    path.write_text(yaml.safe_dump(case))
    async with Standalone() as c:
        r = await run_case(
            c,
            load_case(corpus, "GatewayFrontendClientCertificateValidation", "nodemesh", CONTROLLER),
            Generated(),
            CONTROLLER,
            scale=0.1,
        )
    assert not r.passed and "want the connection refused" in r.reason
