"""TLS through a real Envoy: termination with a Secret's certificate (SDS), passthrough by SNI, Ingress."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from conformance import objects as o
from conformance.cases import Generated
from conformance.client import client_context, http_request, tls_exchange
from conformance.runner import expect_eventually
from conformance.standalone import Standalone

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
pytestmark = [ROOT_ONLY, pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

NS, CERTS = "tls-infra", "tls-certs"
GEN = Generated()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[Standalone]:
    async with Standalone() as c:
        passthrough = GEN.pair(
            NS, "tls-passthrough-checks-certificate", "signed by the CA; DNS SAN abc.example.com"
        )
        await c.apply(
            [
                o.namespace(NS),
                o.namespace(CERTS),
                o.service("web", NS, [("http", 8080, 3000)]),
                o.service("tcp-backend", NS, [("tls", 8443, 8443), ("tcp", 3000, 3000)]),
                o.service("https-backend", NS, [("https", 443, 8443)]),
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "ca", "namespace": NS},
                    "data": {"ca.crt": GEN.ca_pair[0].decode()},
                },
                o.secret(
                    NS, "tls-validity-checks-certificate", GEN.pair(NS, "tls-validity-checks-certificate")
                ),
                o.secret(CERTS, "shared-cert", GEN.pair(NS, "tls-validity-checks-certificate")),
            ]
        )
        await c.ensure_backends(
            [
                {"service": f"{NS}/web", "pods": {"namespace": NS, "deployment": "web", "replicas": 1}},
                {
                    "service": f"{NS}/tcp-backend",
                    "pods": {
                        "namespace": NS,
                        "deployment": "tcp-backend",
                        "replicas": 1,
                        "server": "echo-tcp",
                        "tls_secret": f"{NS}/tls-passthrough-checks-certificate",
                    },
                },
                {
                    "service": f"{NS}/https-backend",
                    "pods": {
                        "namespace": NS,
                        "deployment": "https-backend",
                        "replicas": 1,
                        "server": "echo-http",
                        "tls_secret": f"{NS}/tls-passthrough-checks-certificate",
                    },
                },
            ],
            {f"{NS}/tls-passthrough-checks-certificate": passthrough},
        )
        yield c


TRUST = f"Secret {NS}/tls-validity-checks-certificate (tls.crt)"


def https(name: str, host: str, cert: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "port": 443,
        "protocol": "HTTPS",
        "hostname": host,
        "tls": {"certificateRefs": [cert]},
    }


async def test_tls_termination_with_certificate_from_secret(cluster: Standalone) -> None:
    gw = o.gateway("https", NS, [https("https", "example.org", {"name": "tls-validity-checks-certificate"})])
    r = o.httproute("r", NS, "https", [{"backendRefs": [{"name": "web", "port": 8080}]}])
    await cluster.apply([gw, r])
    target = {"gateway": f"{NS}/https", "port": 443}
    req = {
        "scheme": "https",
        "host": "example.org",
        "path": "/",
        "tls": {"server_name": "example.org", "trusted_certificate": TRUST},
    }
    await expect_eventually(
        cluster,
        target,
        req,
        {
            "status": 200,
            "backend": f"{NS}/web",
            "request_seen_by_backend": {"host": "example.org", "headers": {"X-Forwarded-Proto": "https"}},
        },
        gen=GEN,
    )
    # A client that trusts another root must fail the handshake: the certificate really comes from the Secret.
    other = Generated()
    resp = http_request(cluster.gateway_address(NS, "https"), 443, req, other.pair("x", "y")[0])
    assert resp.status == 0 and ("CERTIFICATE_VERIFY_FAILED" in resp.error or "SSL" in resp.error)
    await cluster.delete([gw, r])


async def test_cross_namespace_certificate_needs_a_grant(cluster: Standalone) -> None:
    gw = o.gateway("xns", NS, [https("https", "example.org", {"name": "shared-cert", "namespace": CERTS})])
    r = o.httproute("r", NS, "xns", [{"backendRefs": [{"name": "web", "port": 8080}]}])
    await cluster.apply([gw, r])
    (lst,) = cluster.get("Gateway", NS, "xns")["status"]["listeners"]  # type: ignore[index]
    assert {(c["type"], c["status"], c["reason"]) for c in lst["conditions"]} >= {
        ("ResolvedRefs", "False", "RefNotPermitted")
    }
    grant = o.grant(CERTS, "g", "Gateway", NS, "Secret", "shared-cert")
    await cluster.apply([grant])
    target = {"gateway": f"{NS}/xns", "port": 443}
    req = {
        "scheme": "https",
        "host": "example.org",
        "path": "/",
        "tls": {"server_name": "example.org", "trusted_certificate": TRUST},
    }
    await expect_eventually(cluster, target, req, {"status": 200, "backend": f"{NS}/web"}, gen=GEN)
    await cluster.delete([gw, r, grant])


async def test_tls_passthrough_reaches_the_tls_backend(cluster: Standalone) -> None:
    gw = o.gateway(
        "pass",
        NS,
        [
            {
                "name": "tls",
                "port": 443,
                "protocol": "TLS",
                "hostname": "*.example.com",
                "tls": {"mode": "Passthrough"},
            }
        ],
    )
    tr = o.route(
        "TLSRoute",
        "tr",
        NS,
        {
            "parentRefs": [{"name": "pass"}],
            "hostnames": ["abc.example.com"],
            "rules": [{"backendRefs": [{"name": "tcp-backend", "port": 8443}]}],
        },
    )
    await cluster.apply([gw, tr])
    addr = cluster.gateway_address(NS, "pass")
    data = tls_exchange(addr, 443, "abc.example.com", GEN.ca_pair[0])
    # The backend terminated TLS itself and saw the client's SNI: the gateway did not decrypt.
    assert data["isTLS"] is True and data["tls"]["serverName"] == "abc.example.com"
    assert data["namespace"] == NS and data["pod"].startswith("tcp-backend-")
    with pytest.raises((ssl.SSLError, OSError, ValueError)):
        tls_exchange(addr, 443, "other.org", GEN.ca_pair[0])  # no chain for this SNI
    await cluster.delete([gw, tr])


async def test_tls_terminate_decrypts_and_proxies_to_the_tcp_backend(cluster: Standalone) -> None:
    """TLSRoute on a TLS listener in Terminate mode: the gateway ends TLS, the backend gets plain TCP."""
    listener = {
        "name": "tls",
        "port": 443,
        "protocol": "TLS",
        "hostname": "example.org",
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "tls-validity-checks-certificate"}]},
    }
    gw = o.gateway("term", NS, [listener])
    tr = o.route(
        "TLSRoute",
        "term",
        NS,
        {
            "parentRefs": [{"name": "term"}],
            "rules": [{"backendRefs": [{"name": "tcp-backend", "port": 3000}]}],
        },
    )
    await cluster.apply([gw, tr])
    addr = cluster.gateway_address(NS, "term")
    trusted = GEN.trusted_pem(TRUST)

    def exchange() -> list[str]:
        ctx = client_context(trusted)
        with socket.create_connection((addr, 443), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="example.org") as s:
                f = s.makefile("rwb")
                lines = [f.readline().decode().strip()]
                for cmd in (b"IS_TLS\n", b"TEST\n"):
                    f.write(cmd)
                    f.flush()
                    lines.append(f.readline().decode().strip())
                return lines

    deadline = time.monotonic() + 30
    while True:
        try:
            welcome, is_tls, test = await asyncio.to_thread(exchange)
            break
        except (OSError, ssl.SSLError, ValueError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    # The client spoke TLS to the gateway with the Secret's certificate; the backend saw cleartext.
    assert welcome == "Gateway API Test TCP Server" and is_tls == "false"
    data = json.loads(test)
    assert data["namespace"] == NS and data["pod"].startswith("tcp-backend-")
    status = cluster.get("TLSRoute", NS, "term")
    assert status is not None
    (parent,) = status["status"]["parents"]
    assert {c["type"]: c["status"] for c in parent["conditions"]}["Accepted"] == "True"
    await cluster.delete([gw, tr])


async def test_ingress_dedicated_with_tls(cluster: Standalone) -> None:
    ing = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {
            "ingressClassName": "cilium",
            "tls": [{"hosts": ["example.org"], "secretName": "tls-validity-checks-certificate"}],
            "rules": [
                {
                    "host": "example.org",
                    "http": {
                        "paths": [
                            {
                                "path": "/shop",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 8080}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    lb = o.lb_service(NS, "cilium-ingress-shop", f"{cluster.gw_net}.200")
    await cluster.apply([lb, ing])
    addr = cluster.get("Ingress", NS, "shop")["status"]["loadBalancer"]["ingress"][0]["ip"]  # type: ignore[index]
    assert addr == f"{cluster.gw_net}.200"
    resp = http_request(addr, 80, {"host": "example.org", "path": "/shop/cart"})
    assert resp.status == 200 and (resp.json() or {}).get("namespace") == NS
    assert http_request(addr, 80, {"host": "example.org", "path": "/other"}).status == 404
    resp = http_request(
        addr,
        443,
        {"scheme": "https", "host": "example.org", "path": "/shop", "tls": {"server_name": "example.org"}},
        GEN.pair(NS, "tls-validity-checks-certificate")[0],
    )
    assert resp.status == 200, resp.error
    await cluster.delete([ing, lb])


def backend_tls_policy(ca: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1alpha3",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": "to-https-backend", "namespace": NS},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "https-backend"}],
            "validation": {
                "hostname": "abc.example.com",
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}],
            },
        },
    }


async def test_backend_tls_policy_originates_tls_and_fails_closed(cluster: Standalone) -> None:
    gw = o.gateway("btls", NS, [{"name": "http", "port": 80, "protocol": "HTTP"}])
    r = o.httproute("r", NS, "btls", [{"backendRefs": [{"name": "https-backend", "port": 443}]}])
    target = {"gateway": f"{NS}/btls", "port": 80}
    await cluster.apply([gw, r])
    # Without a policy the gateway speaks plaintext to a TLS port: no success possible.
    resp = http_request(cluster.gateway_address(NS, "btls"), 80, {"path": "/"})
    assert resp.status != 200
    await cluster.apply([backend_tls_policy("ca")])
    req = {"path": "/", "host": "shop.example.com"}
    await expect_eventually(cluster, target, req, {"status": 200, "backend": f"{NS}/https-backend"})
    body = http_request(cluster.gateway_address(NS, "btls"), 80, req).json() or {}
    assert body["tls"]["serverName"] == "abc.example.com"  # the backend saw TLS with the policy's SNI
    # A policy whose CA is missing must not fall back to plaintext: 500.
    await cluster.apply([backend_tls_policy("missing")])
    await expect_eventually(cluster, target, req, {"status": 500})
    await cluster.delete([gw, r, backend_tls_policy("missing")])
