"""Attacks on the ADS server (issue 12: "the ADS server is plaintext and unauthenticated and believes
the node id in the request; anyone who reaches it asks as node-1 for Secrets").

The real xds service runs as its own process (``python -m services.xds``) with the credentials the
local supervisor provisions (nodemesh/xdspki.py); the attacker is a gRPC client on the same host.
The last test runs a real Envoy with its node's certificate: mTLS must not cost the honest node
anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from conformance.envoy import Envoy
from nodemesh.bus import Bus
from services.xds.bootstrap import render_bootstrap
from services.xds.snapshot import LISTENER, SECRET
from testkit.natsserver import NatsServer, free_port
from testkit.spiffe_ca import key_pem
from testkit.xdspki import TestPki
from tests.xds.ads_client import AdsClient
from tests.xds.test_envoy_app import mark_synced, put

KEY_NAME = "shared-keys/tenant-key"


def _self_signed() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key).decode()


CERT_PEM, KEY_PEM = _self_signed()
CEC_API = "cilium.io/v2"
DTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def objects(port: int) -> list[dict[str, Any]]:
    """A cluster-wide key, and a listener that only node-1 runs (nodeSelector) terminating TLS with it."""
    secret = {
        "@type": SECRET,
        "name": "tenant-key",
        "tlsCertificate": {
            "certificateChain": {"inlineString": CERT_PEM},
            "privateKey": {"inlineString": KEY_PEM},
        },
    }
    listener = {
        "@type": LISTENER,
        "name": "edge",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [
            {
                "filters": [
                    {"name": "tcp", "typedConfig": {"@type": TCP_PROXY, "statPrefix": "edge", "cluster": "x"}}
                ],
                "transportSocket": {
                    "name": "envoy.transport_sockets.tls",
                    "typedConfig": {
                        "@type": DTLS,
                        "commonTlsContext": {
                            "tlsCertificateSdsSecretConfigs": [{"name": KEY_NAME, "sdsConfig": {"ads": {}}}]
                        },
                    },
                },
            }
        ],
    }
    return [
        {
            "apiVersion": CEC_API,
            "kind": "CiliumClusterwideEnvoyConfig",
            "metadata": {"name": "shared-keys", "generation": 1},
            "spec": {"resources": [secret]},
        },
        {
            "apiVersion": CEC_API,
            "kind": "CiliumClusterwideEnvoyConfig",
            "metadata": {"name": "edge", "generation": 1},
            "spec": {
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-1"}},
                "resources": [listener],
            },
        },
    ]


class XdsProcess:
    def __init__(self, pki: TestPki, port: int) -> None:
        self.pki = pki
        self.port = port


@contextlib.contextmanager
def _xds_process(nats_url: str, pki: TestPki) -> Iterator[XdsProcess]:
    port, health = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="nm-xds-") as data:
        argv = [sys.executable, "-m", "services.xds", "--nats-url", nats_url, "--data-dir", data]
        argv += ["--health-addr", f"127.0.0.1:{health}", "--grpc-addr", f"127.0.0.1:{port}"]
        argv += ["--nodes", "node-1,node-2", "--tls-dir", pki.server_dir, "--log-format", "text"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(proc, health)
            yield XdsProcess(pki, port)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_ready(proc: subprocess.Popen[bytes], health: int) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"xds exited ({proc.returncode}): {err[-2000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise AssertionError("xds not ready in 60 s")


@pytest.fixture
async def xds(nats_server: NatsServer, bus: Bus) -> AsyncIterator[XdsProcess]:
    for obj in objects(free_port()):
        await put(bus, obj)
    await mark_synced(bus)
    pki = TestPki(("node-1", "node-2"))
    try:
        with _xds_process(nats_server.url, pki) as x:
            yield x
    finally:
        pki.close()


def _creds(pki: TestPki, node: str | None) -> grpc.ChannelCredentials:
    """TLS trusting the xDS CA, presenting ``node``'s certificate (None: no client certificate)."""
    srv = Path(pki.server_dir)
    if node is None:
        return grpc.ssl_channel_credentials((srv / "ca.crt").read_bytes())
    d = Path(pki.node_dir(node))
    return grpc.ssl_channel_credentials(
        (d / "ca.crt").read_bytes(), (d / "tls.key").read_bytes(), (d / "tls.crt").read_bytes()
    )


async def _refused(client: AdsClient) -> grpc.StatusCode:
    """Wait for the stream to fail; it must not have delivered a single response."""
    for _ in range(200):
        if client.error is not None:
            break
        await asyncio.sleep(0.05)
    assert isinstance(client.error, grpc.aio.AioRpcError), f"stream not refused: {client.received}"
    assert client.received == []
    return client.error.code()


async def test_a_client_without_a_certificate_is_refused(xds: XdsProcess) -> None:
    async with AdsClient(xds.port, "node-1") as plain:
        await plain.request(SECRET, [KEY_NAME])
        assert await _refused(plain) == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the right CA but presents no client certificate: the handshake fails.
    async with AdsClient(xds.port, "node-1", creds=_creds(xds.pki, None)) as anon:
        await anon.request(SECRET, [KEY_NAME])
        assert await _refused(anon) == grpc.StatusCode.UNAVAILABLE


async def test_node2_certificate_asking_as_node1_is_refused(xds: XdsProcess) -> None:
    for delta in (False, True):
        async with AdsClient(xds.port, "node-1", delta=delta, creds=_creds(xds.pki, "node-2")) as c:
            if delta:
                await c.delta_request(SECRET, [KEY_NAME])
            else:
                await c.request(SECRET, [KEY_NAME])
            assert await _refused(c) == grpc.StatusCode.PERMISSION_DENIED


def _secrets(resp: Any) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    for any_ in [getattr(r, "resource", r) for r in resp.resources]:
        s = Secret()
        any_.Unpack(s)
        out[s.name] = s
    return out


async def test_node2_never_receives_a_secret_only_node1_references(xds: XdsProcess) -> None:
    # node-1 runs the listener that terminates TLS with the key: it gets it.
    async with AdsClient(xds.port, "node-1", creds=_creds(xds.pki, "node-1")) as n1:
        await n1.request(SECRET, [KEY_NAME])
        got = _secrets(await n1.recv(30))
        assert got[KEY_NAME].tls_certificate.private_key.inline_string == KEY_PEM
    # node-2, honestly itself, asks for the same name (SotW by name, Delta by name and wildcard).
    async with AdsClient(xds.port, "node-2", creds=_creds(xds.pki, "node-2")) as n2:
        await n2.request(SECRET, [KEY_NAME])
        assert _secrets(await n2.recv(30)) == {}
    async with AdsClient(xds.port, "node-2", delta=True, creds=_creds(xds.pki, "node-2")) as d2:
        await d2.delta_request(SECRET, [KEY_NAME, "*"])
        await d2.expect_silence(1.0)
    assert all(KEY_NAME not in _secrets(r) for r in [*n2.received, *d2.received])


async def test_a_node_envoy_with_its_certificate_is_served(xds: XdsProcess) -> None:
    """The honest path over mTLS: node-1's Envoy gets (and binds) the listener only node-1 runs."""
    boot = render_bootstrap("node-1", "127.0.0.1", xds.port, 0, tls_dir=xds.pki.node_dir("node-1"))
    envoy = Envoy(boot, name="envoy@node-1").start()
    try:
        await envoy.wait_live(60)
        for _ in range(300):
            stats = await envoy.stats("listener_manager.total_listeners_active")
            if stats.get("listener_manager.total_listeners_active", 0) >= 1:
                break
            await asyncio.sleep(0.1)
        # The listener only node-1 runs is active: its key arrived over the authenticated stream.
        listeners = await envoy.config_dump("dynamic_listeners")
        assert "edge/edge" in str(listeners)
        assert (await envoy.stats("control_plane.connected_state"))["control_plane.connected_state"] == 1
    finally:
        envoy.stop()


pytestmark = pytest.mark.envoy
