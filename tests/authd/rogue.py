"""Rogue peers for the refusal tests: a responder and an initiator that present bad certificates."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from services.authd.handshake import initiate
from services.authd.spiffe import AuthFailure
from services.authd.tlsctx import client_context, load_chain_from_memory


class RogueResponder:
    """A TLS 1.3 server on ``address`` that presents ``chain``/``key`` (or refuses every SNI)."""

    def __init__(self, address: str, bundle_pem: str) -> None:
        self.bundle_pem = bundle_pem
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def present(self, chain_pem: str, key_pem: bytes, *, refuse_sni: bool = False) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=self.bundle_pem)
        load_chain_from_memory(ctx, chain_pem, key_pem)
        if refuse_sni:
            ctx.sni_callback = lambda *_: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        self.ctx = ctx

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.settimeout(5)
            try:
                assert self.ctx is not None
                tls = self.ctx.wrap_socket(conn, server_side=True)
                tls.unwrap()  # "accept" whatever the initiator says
            except (OSError, ValueError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def rogue_initiate(
    chain_pem: str,
    key_pem: bytes,
    bundle_pem: str,
    *,
    source: str,
    host: str,
    port: int,
    sni_identity: int,
    td: str,
) -> AuthFailure | None:
    """Connect to a real authd as an initiator presenting ``chain_pem``; the failure it saw, or None."""
    ctx = client_context(chain_pem, key_pem, bundle_pem)
    try:
        initiate(
            ctx,
            host=host,
            port=port,
            source=source,
            server_name=f"{sni_identity}.{td}",
            trust_domain=td,
            expected_remote=sni_identity,
            local_not_after=time.time() + 3600,
            timeout=10,
        )
    except AuthFailure as f:
        return f
    return None
